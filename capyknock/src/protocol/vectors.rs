//! Checks the test vectors printed in docs/PROTOCOL.md against this implementation, so the
//! document and the code cannot drift apart. When a block is out of date (or a new one has only
//! its inputs), `document_blocks_are_what_the_code_renders` fails and prints the block as it
//! should read, ready to paste into the document.

use std::{collections::BTreeMap, net::IpAddr};

use capyknock_common::wire::{HEADER_LEN, split_knock};

use super::{
    keys::{TotpSecret, UserId, UserKey},
    packet::seal_knock,
    payload::{PacketId, Payload},
    replay::ReplayState,
    totp::{Totp, step_of},
    users::{AllowIp, TotpMode, User, Users},
    verify::{Settings, Verdict, Verifier},
};
use crate::ports::PortSpec;

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// The inputs of one vector.
struct Inputs {
    user_id: UserId,
    user_key: [u8; 32],
    totp_secret: [u8; 20],
    time: u64,
    nonce: [u8; 24],
    packet_id: [u8; 16],
    ports: Vec<PortSpec>,
    allow_ip: Option<IpAddr>,
}

/// The outputs, as hex strings or text, in document order.
fn outputs(i: &Inputs) -> Vec<(&'static str, String)> {
    let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
    let key = UserKey::from_bytes(i.user_key);
    let code = Totp::new(&TotpSecret::from_bytes(i.totp_secret))
        .unwrap()
        .code_at(i.time);
    let payload = Payload {
        timestamp: i.time,
        totp: code.clone(),
        ports: i.ports.clone(),
        allow_ip: i.allow_ip,
        packet_id: PacketId(i.packet_id),
    };
    let plaintext = payload.encode().unwrap();
    let packet = seal_knock(&i.user_id, &key, step_of(i.time), &payload, &i.nonce).unwrap();
    let (header, body) = split_knock(&packet);
    vec![
        ("tag_key", hex(key.tag_key().expose_secret())),
        ("aead_key", hex(&key.aead_key()[..])),
        ("totp_code", code.as_str().to_owned()),
        ("time_step", step_of(i.time).to_string()),
        ("plaintext", hex(&plaintext[..])),
        ("header", hex(&header)),
        ("sealed_body", hex(&body)),
        ("packet", hex(&packet)),
    ]
}

/// Parses the ```` ```vector ```` blocks: `name = value` lines, indented lines continue the
/// previous value (hex wrapped for reading).
fn parse_blocks(doc: &str) -> Vec<BTreeMap<String, String>> {
    let mut blocks = vec![];
    let mut current: Option<BTreeMap<String, String>> = None;
    let mut last_key = String::new();
    for line in doc.lines() {
        if line.trim() == "```vector" {
            current = Some(BTreeMap::new());
            continue;
        }
        let Some(block) = current.as_mut() else {
            continue;
        };
        if line.trim() == "```" {
            blocks.push(current.take().unwrap());
            continue;
        }
        if line.starts_with(' ') && !last_key.is_empty() {
            block.get_mut(&last_key).unwrap().push_str(line.trim());
        } else if let Some((k, v)) = line.split_once('=') {
            last_key = k.trim().to_owned();
            block.insert(last_key.clone(), v.trim().to_owned());
        }
    }
    blocks
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    data_encoding::HEXLOWER
        .decode(s.as_bytes())
        .unwrap()
        .try_into()
        .unwrap()
}

fn inputs(block: &BTreeMap<String, String>) -> Inputs {
    let get = |k: &str| block.get(k).unwrap_or_else(|| panic!("vector lacks {k}"));
    let ports = get("ports");
    let allow_ip = get("allow_ip");
    Inputs {
        user_id: get("user_id").parse().unwrap(),
        user_key: unhex(get("user_key")),
        totp_secret: TotpSecret::from_base32(get("totp_secret"))
            .unwrap()
            .expose_secret()
            .to_owned(),
        time: get("time").parse().unwrap(),
        nonce: unhex(get("nonce")),
        packet_id: unhex(get("packet_id")),
        ports: if ports == "none" {
            vec![]
        } else {
            ports.split(' ').map(|p| p.parse().unwrap()).collect()
        },
        allow_ip: (allow_ip != "none").then(|| allow_ip.parse().unwrap()),
    }
}

/// Wraps hex at 64 characters with indented continuation lines.
fn wrap(value: &str) -> String {
    let chunks: Vec<&str> = value
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    chunks.join("\n              ")
}

#[test]
fn protocol_md_vectors_match() {
    let blocks = parse_blocks(DOC);
    assert!(
        blocks.len() >= 4,
        "docs/PROTOCOL.md should hold at least four vectors"
    );
    for (n, block) in blocks.iter().enumerate() {
        let i = inputs(block);
        for (field, value) in outputs(&i) {
            let documented = block
                .get(field)
                .unwrap_or_else(|| panic!("vector {n} lacks {field}"));
            assert_eq!(documented, &value, "vector {n}, field {field}");
        }
        // The documented packet also passes the verifier at its time.
        let user = User {
            id: i.user_id,
            nickname: "vector".into(),
            key: UserKey::from_bytes(i.user_key),
            totp: TotpSecret::from_bytes(i.totp_secret),
            totp_mode: TotpMode::Prompt,
            ports: if i.ports.is_empty() {
                vec![PortSpec::tcp(22), PortSpec::tcp(443), PortSpec::udp(51820)]
            } else {
                i.ports.clone()
            },
            access: std::time::Duration::from_hours(1),
            allow_ip: AllowIp::Payload,
        };
        let users = Users::new(vec![user]).unwrap();
        let packet = data_encoding::HEXLOWER
            .decode(block["packet"].as_bytes())
            .unwrap();
        let source: IpAddr = "192.0.2.10".parse().unwrap();
        let mut v = Verifier::new(Settings::default(), ReplayState::safe_start(0));
        let Verdict::Grant(g) = v.verify(&users, &packet, source, i.time) else {
            panic!("vector {n} is not granted");
        };
        assert_eq!(g.addr, i.allow_ip.unwrap_or(source));
        assert_eq!(packet.get(..HEADER_LEN).map(<[u8]>::len), Some(HEADER_LEN));
    }
}

/// Renders every vector block from its inputs and checks the document holds exactly that text.
/// On failure it prints the blocks as they should read, so the document can be regenerated.
#[test]
fn document_blocks_are_what_the_code_renders() {
    use std::fmt::Write as _;
    for block in parse_blocks(DOC) {
        let i = inputs(&block);
        let mut text = String::from("```vector\n");
        for k in [
            "user_id",
            "user_key",
            "totp_secret",
            "time",
            "nonce",
            "packet_id",
            "ports",
            "allow_ip",
        ] {
            writeln!(text, "{k:<11} = {}", block[k]).unwrap();
        }
        for (k, v) in outputs(&i) {
            writeln!(text, "{k:<11} = {}", wrap(&v)).unwrap();
        }
        text.push_str("```");
        assert!(
            DOC.contains(&text),
            "docs/PROTOCOL.md vector block out of date; it should read:\n{text}"
        );
    }
}
