//! QR codes of the `otpauth://` URI: for the terminal (Unicode half blocks, two module rows per
//! text line, from the `qrcode` crate) and as a PNG file (greyscale, written with the `png`
//! crate; both are small, pure Rust, and widely used).

use qrcode::{Color, EcLevel, QrCode, render::unicode::Dense1x2};

/// Pixels per module in the PNG.
pub const PNG_SCALE: usize = 8;
/// Light modules around the code (the QR specification asks for 4).
pub const QUIET_ZONE: usize = 4;
/// Largest PNG side accepted (a URI that would need more is refused as absurd).
const MAX_PNG_SIDE: usize = 4096;

/// Why a QR code could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The data does not fit a QR code.
    #[error("cannot encode a QR code")]
    Encode(#[source] qrcode::types::QrError),
    /// The image would be too large.
    #[error("QR code too large for a PNG")]
    TooLarge,
    /// PNG encoding failed.
    #[error("cannot encode the PNG")]
    Png(#[source] png::EncodingError),
}

fn code(data: &str) -> Result<QrCode, QrError> {
    QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).map_err(QrError::Encode)
}

/// The code as text lines for a terminal. With `ansi`, each line sets black-on-white colours so
/// the code scans on dark and light terminal themes alike; without, dark modules are drawn as
/// blocks (right for a light background, or a file).
pub fn terminal(data: &str, ansi: bool) -> Result<String, QrError> {
    let text = code(data)?
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Dark)
        .light_color(Dense1x2::Light)
        .quiet_zone(true)
        .build();
    if !ansi {
        let mut text = text;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        // 30: black foreground (the blocks), 107: bright white background (the light modules).
        out.push_str("\x1b[30;107m");
        out.push_str(line);
        out.push_str("\x1b[0m\n");
    }
    Ok(out)
}

/// The code as a greyscale PNG: [`PNG_SCALE`] pixels per module, a [`QUIET_ZONE`]-module margin.
pub fn png(data: &str) -> Result<Vec<u8>, QrError> {
    let qr = code(data)?;
    let modules = qr.width();
    let colors = qr.to_colors();
    let side_modules = modules + 2 * QUIET_ZONE;
    let side = side_modules * PNG_SCALE;
    if side > MAX_PNG_SIDE {
        return Err(QrError::TooLarge);
    }
    let mut pixels = vec![255u8; side * side];
    for (y_row, row) in pixels.chunks_exact_mut(side).enumerate() {
        let my = y_row / PNG_SCALE;
        for (x, px) in row.iter_mut().enumerate() {
            let mx = x / PNG_SCALE;
            let inside = (QUIET_ZONE..QUIET_ZONE + modules).contains(&mx)
                && (QUIET_ZONE..QUIET_ZONE + modules).contains(&my);
            if inside {
                let index = (my - QUIET_ZONE) * modules + (mx - QUIET_ZONE);
                if colors.get(index) == Some(&Color::Dark) {
                    *px = 0;
                }
            }
        }
    }
    let side32 = u32::try_from(side).map_err(|_| QrError::TooLarge)?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side32, side32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(QrError::Png)?;
    writer.write_image_data(&pixels).map_err(QrError::Png)?;
    writer.finish().map_err(QrError::Png)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "otpauth://totp/capyknock:alice@work.example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=capyknock&algorithm=SHA1&digits=6&period=30";

    #[test]
    fn terminal_rendering_has_square_shape() {
        let plain = terminal(URI, false).unwrap();
        let lines: Vec<&str> = plain.lines().collect();
        let width = lines[0].chars().count();
        assert!(width >= 21 + 2 * QUIET_ZONE, "{width}");
        // Two module rows per line.
        assert_eq!(lines.len(), width.div_ceil(2));
        assert!(lines.iter().all(|l| l.chars().count() == width));
        let ansi = terminal(URI, true).unwrap();
        assert_eq!(ansi.lines().count(), lines.len());
        assert!(
            ansi.lines()
                .all(|l| l.starts_with("\x1b[30;107m") && l.ends_with("\x1b[0m"))
        );
    }

    #[test]
    fn png_matches_the_modules() {
        let bytes = png(URI).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let qr = code(URI).unwrap();
        let side = (qr.width() + 2 * QUIET_ZONE) * PNG_SCALE;
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        // The corner is quiet; each module centre has the module's colour.
        assert_eq!(buf[0], 255);
        let colors = qr.to_colors();
        for my in 0..qr.width() {
            for mx in 0..qr.width() {
                let y = (my + QUIET_ZONE) * PNG_SCALE + PNG_SCALE / 2;
                let x = (mx + QUIET_ZONE) * PNG_SCALE + PNG_SCALE / 2;
                let want = if colors[my * qr.width() + mx] == Color::Dark {
                    0
                } else {
                    255
                };
                assert_eq!(buf[y * side + x], want);
            }
        }
    }
}
