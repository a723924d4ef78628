//! `multipart/form-data` request bodies, as the server's upload endpoints read them: the
//! `cnn remote` client sends its files with this, and the server's tests build their requests
//! with it. It lives here, in the one crate both reach (the CLI does not depend on the server).

/// The boundary between parts of every body built here.
pub const BOUNDARY: &str = "----cifar-cnn-form-7c1a5e";

/// The `Content-Type` of a body built by [`multipart`].
pub fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A `multipart/form-data` body of `(field, filename, bytes)` parts, in order. Names are
/// written as given (a quote or a line break in one makes the part header malformed: callers
/// that send names from elsewhere replace them first).
pub fn multipart(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    form(parts, &[])
}

/// A `multipart/form-data` body of file parts (as [`multipart`]) followed by plain form values
/// `(field, text)`, parts without a file name (`POST /explain`'s `method`, `target`, ...).
pub fn form(parts: &[(&str, &str, &[u8])], values: &[(&str, &str)]) -> Vec<u8> {
    let size: usize = parts
        .iter()
        .map(|(f, n, b)| 128 + f.len() + n.len() + b.len())
        .sum();
    let mut body = Vec::with_capacity(size + BOUNDARY.len() + 8);
    for (field, value) in values {
        body.extend(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n"
            )
            .bytes(),
        );
    }
    for (field, filename, bytes) in parts {
        body.extend(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_order_then_the_closing_boundary() {
        let body = multipart(&[("files", "a.jpg", b"AB"), ("files", "b.png", b"")]);
        let text = String::from_utf8(body).unwrap();
        let expected = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\nContent-Type: application/octet-stream\r\n\r\nAB\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.png\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n\
             --{BOUNDARY}--\r\n"
        );
        assert_eq!(text, expected);
        assert_eq!(multipart(&[]), format!("--{BOUNDARY}--\r\n").into_bytes());
        assert!(content_type().ends_with(BOUNDARY));
        let text = String::from_utf8(form(
            &[("file", "a.jpg", b"AB")],
            &[("method", "occlusion")],
        ))
        .unwrap();
        assert!(text.starts_with(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nocclusion\r\n--{BOUNDARY}\r\n"
        )), "{text}");
    }
}
