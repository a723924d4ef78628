//! An input's elements, read once its datatype and shape are known: numbers from JSON (flat or
//! nested lists), base64 image files from JSON, or `BYTES` of the binary tensor data extension.
//!
//! The one hand-written visitor of the request: it keeps at most the count the shape gives
//! (into a buffer of exactly that size, paid for before it is read), counts whatever comes
//! beyond it without keeping it, and never quotes a string back.

use std::fmt;

use base64::Engine as _;
use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};

use super::request::string_here;
use super::{IMAGE_INPUT, TENSOR_INPUT, V2Error};

/// The numbers of `json` (an input's `data`): the first `count` kept when `keep` (the caller
/// has paid for `count` floats), and how many there were in all.
pub(super) fn floats(json: &[u8], count: usize, keep: bool) -> Result<(Vec<f32>, usize), V2Error> {
    let mut sink = Floats {
        kept: Vec::with_capacity(if keep { count } else { 0 }),
        keep: if keep { count } else { 0 },
        seen: 0,
    };
    read(json, &mut sink, TENSOR_INPUT)?;
    Ok((sink.kept, sink.seen))
}

/// The image files of `json` (an input's `data`, base64 strings): the first `count` decoded,
/// and how many there were in all.
pub(super) fn files(json: &[u8], count: usize) -> Result<(Vec<Vec<u8>>, usize), V2Error> {
    let mut sink = Files {
        kept: Vec::with_capacity(count),
        keep: count,
        seen: 0,
    };
    read(json, &mut sink, IMAGE_INPUT)?;
    Ok((sink.kept, sink.seen))
}

/// `BYTES` elements of the binary tensor data extension: each a 4-byte little-endian length
/// and that many bytes. More than `max` elements is an error as soon as the first one too many
/// starts, before anything is copied.
pub(super) fn split_bytes(binary: &[u8], max: usize) -> Result<Vec<Vec<u8>>, V2Error> {
    let truncated = |index: usize| {
        V2Error::BadRequest(format!(
            "input '{IMAGE_INPUT}': binary element {index} is cut short (each is a 4-byte little-endian length and that many bytes)"
        ))
    };
    let mut spans = Vec::new();
    let mut at = 0;
    while at < binary.len() {
        let index = spans.len();
        if index == max {
            return Err(V2Error::TooManyImages {
                got: None,
                limit: max,
            });
        }
        let prefix: [u8; 4] = binary
            .get(at..at + 4)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| truncated(index))?;
        let len = u32::from_le_bytes(prefix) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= binary.len())
            .ok_or_else(|| truncated(index))?;
        spans.push(start..end);
        at = end;
    }
    Ok(spans
        .into_iter()
        .map(|span| binary[span].to_vec())
        .collect())
}

/// Where the elements go. A refusal is the error the client gets, so a sink gives it whole.
trait Sink {
    fn number(&mut self, v: f64) -> Result<(), V2Error>;
    fn string(&mut self, v: &str) -> Result<(), V2Error>;
}

struct Floats {
    kept: Vec<f32>,
    keep: usize,
    seen: usize,
}

impl Sink for Floats {
    fn number(&mut self, v: f64) -> Result<(), V2Error> {
        if self.seen < self.keep {
            self.kept.push(v as f32);
        }
        self.seen += 1;
        Ok(())
    }

    fn string(&mut self, _: &str) -> Result<(), V2Error> {
        Err(V2Error::BadRequest(format!(
            "input '{TENSOR_INPUT}' holds FP32 numbers, not strings"
        )))
    }
}

struct Files {
    kept: Vec<Vec<u8>>,
    keep: usize,
    seen: usize,
}

/// Base64 as JSON clients send it: the standard alphabet, padded or not.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl Sink for Files {
    fn number(&mut self, _: f64) -> Result<(), V2Error> {
        Err(V2Error::BadRequest(format!(
            "input '{IMAGE_INPUT}' holds image files, each a base64 string in JSON"
        )))
    }

    fn string(&mut self, v: &str) -> Result<(), V2Error> {
        if self.seen < self.keep {
            let bytes = BASE64.decode(v).map_err(|e| {
                V2Error::BadRequest(format!(
                    "element {} of input '{IMAGE_INPUT}' is not base64 ({e}): in JSON, each element is an image file in base64",
                    self.seen
                ))
            })?;
            self.kept.push(bytes);
        }
        self.seen += 1;
        Ok(())
    }
}

/// Runs `sink` over `json`; a refusal of the sink's comes back as it made it, anything else
/// the JSON does wrong as a 400 naming the input.
fn read<S: Sink>(json: &[u8], sink: &mut S, input: &str) -> Result<(), V2Error> {
    let mut refused = None;
    let mut de = serde_json::Deserializer::from_slice(json);
    let result = de.deserialize_any(Elements {
        sink,
        refused: &mut refused,
        top: true,
    });
    match (result, refused) {
        (_, Some(refusal)) => Err(refusal),
        (Err(e), None) => Err(V2Error::BadRequest(format!(
            "input '{input}': its data are not tensor data: {e}"
        ))),
        (Ok(()), None) => Ok(()),
    }
}

/// Tensor data, flat or nested; at the `top`, only a list.
struct Elements<'s, S> {
    sink: &'s mut S,
    refused: &'s mut Option<V2Error>,
    top: bool,
}

impl<S: Sink> Elements<'_, S> {
    fn element<E: de::Error>(
        self,
        put: impl FnOnce(&mut S) -> Result<(), V2Error>,
    ) -> Result<(), E> {
        put(self.sink).map_err(|refusal| {
            *self.refused = Some(refusal);
            E::custom("refused")
        })
    }

    fn number<E: de::Error>(self, v: f64) -> Result<(), E> {
        if self.top {
            return Err(E::invalid_type(de::Unexpected::Float(v), &self));
        }
        self.element(|sink| sink.number(v))
    }
}

impl<'de, S: Sink> DeserializeSeed<'de> for Elements<'_, S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Sink> Visitor<'de> for Elements<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("tensor data: numbers, or base64 strings, in a list (flat or nested)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Elements {
                sink: &mut *self.sink,
                refused: &mut *self.refused,
                top: false,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.top {
            return Err(string_here(v, &self));
        }
        self.element(|sink| sink.string(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_flat_or_nested_kept_up_to_the_count_and_counted_beyond() {
        let (kept, seen) = floats(b"[[1, 2.5], [-3], 4e0]", 4, true).unwrap();
        assert_eq!((kept, seen), (vec![1.0, 2.5, -3.0, 4.0], 4));
        let (kept, seen) = floats(b"[1, 2, 3, 4, 5, 6]", 4, true).unwrap();
        assert_eq!((kept.len(), kept.capacity(), seen), (4, 4, 6));
        let (kept, seen) = floats(b"[1, 2]", 1000, false).unwrap();
        assert_eq!((kept.capacity(), seen), (0, 2));
    }

    #[test]
    fn files_decoded_up_to_the_count() {
        let (kept, seen) = files(br#"["AAE=", ["Ag"], "%%%"]"#, 2).unwrap();
        assert_eq!((kept, seen), (vec![vec![0, 1], vec![2]], 3));
        let e = files(br#"["AAE=", "%%%"]"#, 2).unwrap_err().to_string();
        assert!(
            e.starts_with("element 1 of input 'image' is not base64"),
            "{e}"
        );
    }

    #[test]
    fn the_wrong_kind_of_element_is_refused_in_words() {
        let e = floats(br#"[1, "AAAA"]"#, 2, true).unwrap_err().to_string();
        assert_eq!(e, "input 'input' holds FP32 numbers, not strings");
        let e = files(b"[1.5]", 1).unwrap_err().to_string();
        assert!(e.contains("base64 string"), "{e}");
        let e = files(b"[true]", 1).unwrap_err().to_string();
        assert!(e.contains("invalid type: boolean"), "{e}");
        let long = format!("\"{}\"", "x".repeat(100_000));
        let e = floats(long.as_bytes(), 1, true).unwrap_err().to_string();
        assert!(
            e.len() < 300 && e.contains("a string of 100000 bytes"),
            "{e:.300}"
        );
        let e = floats(b"7", 1, true).unwrap_err().to_string();
        assert!(e.contains("invalid type: floating point"), "{e}");
    }

    #[test]
    fn binary_elements_split_and_bounded() {
        let mut binary = Vec::new();
        for file in [&b"ab"[..], b"", b"xyz"] {
            binary.extend_from_slice(&(file.len() as u32).to_le_bytes());
            binary.extend_from_slice(file);
        }
        let files = split_bytes(&binary, 3).unwrap();
        assert_eq!(files, [b"ab".to_vec(), vec![], b"xyz".to_vec()]);
        assert!(matches!(
            split_bytes(&binary, 2),
            Err(V2Error::TooManyImages {
                got: None,
                limit: 2
            })
        ));
        let e = split_bytes(&binary[..binary.len() - 1], 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("binary element 2 is cut short"), "{e}");
    }
}
