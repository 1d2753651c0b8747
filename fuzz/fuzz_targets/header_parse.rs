//! Fuzzes the no_std header parse and tag check shared with the XDP program: any bytes, never a
//! panic, and a header that parses re-encodes to the same bytes.
#![no_main]

use capyknock_common::wire::{HEADER_LEN, Header, TAG_KEY_LEN, header_tag, tagged_part};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.first_chunk::<HEADER_LEN>() else {
        return;
    };
    let key: [u8; TAG_KEY_LEN] = *b"fuzz tag key 16b";
    let tag = header_tag(&key, &tagged_part(bytes));
    if let Ok(header) = Header::parse(bytes) {
        assert_eq!(&header.to_bytes(), bytes, "parse/encode round trip");
        assert_eq!(header.tag_is_valid(&key), header.tag == tag);
    }
});
