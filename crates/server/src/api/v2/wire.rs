//! The gRPC messages' codec: prost's, with a request's wire format checked before it is
//! decoded. A message is charged on the body budget by its bytes on the wire
//! ([`crate::grpc`]), but prost decodes a repeated field of empty elements into far more than
//! it took to send (an empty `inputs` element is 2 bytes on the wire and about 300 in memory):
//! so every repeated field the server reads is counted here first, bounded as the HTTP form's
//! JSON parser bounds it (one input, two outputs, eight dimensions, a few parameters), and the
//! typed contents this model has no use for (and which decode up to eight times larger) are
//! refused unread.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

use super::proto;
use super::{MAX_DIMS, MAX_OUTPUTS};

/// Most entries of a `parameters` map.
const MAX_PARAMETERS: usize = 16;
/// Most elements of `bytes_contents` (a request takes at most `--max-files`; this bounds what
/// is decoded before that is checked).
const MAX_BYTES_ELEMENTS: usize = 4096;

/// What a request's wire format must satisfy before it is decoded.
pub trait WireCheck {
    /// `Err` with the reason when `wire` must not be decoded.
    fn check(_wire: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

// Requests of strings and scalars only: what they decode into is no larger than what was sent.
impl WireCheck for proto::ServerLiveRequest {}
impl WireCheck for proto::ServerReadyRequest {}
impl WireCheck for proto::ModelReadyRequest {}
impl WireCheck for proto::ServerMetadataRequest {}
impl WireCheck for proto::ModelMetadataRequest {}
impl WireCheck for proto::ModelConfigRequest {}
impl WireCheck for proto::ModelStatisticsRequest {}

impl WireCheck for proto::ModelInferRequest {
    fn check(wire: &[u8]) -> Result<(), String> {
        let mut counts = [0usize; 8];
        for field in Fields(wire) {
            let (number, value) = field?;
            match number {
                4 => count(&mut counts[4], MAX_PARAMETERS, "request parameters")?,
                5 => {
                    count(&mut counts[5], 1, "inputs")?;
                    input(value.bytes()?)?;
                }
                6 => {
                    count(&mut counts[6], MAX_OUTPUTS, "outputs")?;
                    output(value.bytes()?)?;
                }
                7 => count(&mut counts[7], 1, "raw_input_contents")?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// An `InferInputTensor`.
fn input(wire: &[u8]) -> Result<(), String> {
    let (mut dims, mut parameters) = (0, 0);
    for field in Fields(wire) {
        let (number, value) = field?;
        match (number, value) {
            // `shape`, packed (one length-delimited run of varints) or not.
            (3, Value::Bytes(packed)) => {
                dims += packed.iter().filter(|b| **b < 0x80).count();
                if dims > MAX_DIMS {
                    return Err(format!("a shape has at most {MAX_DIMS} dimensions"));
                }
            }
            (3, _) => count(&mut dims, MAX_DIMS, "shape dimensions")?,
            (4, _) => count(&mut parameters, MAX_PARAMETERS, "input parameters")?,
            (5, value) => contents(value.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

/// An `InferRequestedOutputTensor`.
fn output(wire: &[u8]) -> Result<(), String> {
    let mut parameters = 0;
    for field in Fields(wire) {
        if field?.0 == 2 {
            count(&mut parameters, MAX_PARAMETERS, "output parameters")?;
        }
    }
    Ok(())
}

/// `InferTensorContents`: `fp32_contents` (no larger decoded than sent) and `bytes_contents`
/// (counted); the other kinds are not this model's.
fn contents(wire: &[u8]) -> Result<(), String> {
    let mut elements = 0;
    for field in Fields(wire) {
        match field?.0 {
            6 => {}
            8 => count(&mut elements, MAX_BYTES_ELEMENTS, "bytes_contents elements")?,
            _ => {
                return Err(
                    "contents: this model takes fp32_contents or bytes_contents only".into(),
                );
            }
        }
    }
    Ok(())
}

fn count(seen: &mut usize, most: usize, what: &str) -> Result<(), String> {
    *seen += 1;
    if *seen > most {
        return Err(format!("more than {most} {what}"));
    }
    Ok(())
}

/// A field's value on the wire.
#[derive(Clone, Copy)]
enum Value<'a> {
    Scalar,
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    fn bytes(self) -> Result<&'a [u8], String> {
        match self {
            Value::Bytes(b) => Ok(b),
            Value::Scalar => Err("a message field has the wrong wire type".into()),
        }
    }
}

/// The fields of a message, in order: protobuf's wire format (a varint key of field number
/// and wire type, then a varint, 8 or 4 bytes, or a length and that many bytes).
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            // Nothing more after a malformed field.
            self.0 = &[];
        }
        Some(field)
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u32, Value<'a>), String> {
        let malformed = || "a malformed message".to_string();
        let key = self.varint().ok_or_else(malformed)?;
        let number = u32::try_from(key >> 3).map_err(|_| malformed())?;
        let value = match key & 7 {
            0 => self.varint().map(|_| Value::Scalar),
            1 => self.take(8).map(|_| Value::Scalar),
            2 => {
                let len = self.varint().ok_or_else(malformed)?;
                usize::try_from(len)
                    .ok()
                    .and_then(|len| self.take(len))
                    .map(Value::Bytes)
            }
            5 => self.take(4).map(|_| Value::Scalar),
            _ => None,
        };
        Ok((number, value.ok_or_else(malformed)?))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte < 0x80 {
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }
}

/// prost's codec, each request's wire format checked ([`WireCheck`]) before it is decoded
/// (`INVALID_ARGUMENT` when it fails); what `build.rs` has the service use.
pub struct Bounded<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Bounded<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for Bounded<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireCheck + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    // Answers are the server's own, bounded by construction: prost's encoder as it is.
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(PhantomData)
    }
}

/// Decodes a request once its wire format passed [`WireCheck`].
pub struct CheckedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + WireCheck> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf;
        // The message is whole in tonic's buffer: its one chunk.
        let wire = buf.chunk();
        if wire.len() == buf.remaining() {
            U::check(wire).map_err(|e| Status::invalid_argument(format!("refused unread: {e}")))?;
        } else {
            return Err(Status::internal("a message not in one piece"));
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("a malformed message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    fn check(request: &proto::ModelInferRequest) -> Result<(), String> {
        proto::ModelInferRequest::check(&request.encode_to_vec())
    }

    #[test]
    fn a_request_the_handler_takes_passes() {
        let request = proto::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "image".into(),
                datatype: "BYTES".into(),
                shape: vec![2, 1],
                contents: Some(proto::InferTensorContents {
                    bytes_contents: vec![vec![1u8; 9].into(), vec![2u8; 9].into()],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: "probabilities".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(check(&request), Ok(()));
    }

    /// Each way a small message would decode into a large one is refused before decoding.
    #[test]
    fn what_decodes_larger_than_it_was_sent_is_refused_unread() {
        let many_inputs = proto::ModelInferRequest {
            inputs: vec![InferInputTensor::default(); 2],
            ..Default::default()
        };
        assert_eq!(check(&many_inputs), Err("more than 1 inputs".into()));
        // Empty elements on the wire by hand: a million `inputs` of 2 bytes each.
        let wire: Vec<u8> = std::iter::repeat_n([0x2a, 0x00], 1_000_000)
            .flatten()
            .collect();
        assert!(proto::ModelInferRequest::check(&wire).is_err());
        let long_shape = proto::ModelInferRequest {
            inputs: vec![InferInputTensor {
                shape: vec![0; MAX_DIMS + 1],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            check(&long_shape)
                .unwrap_err()
                .contains("at most 8 dimensions")
        );
        let int64s = proto::ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(proto::InferTensorContents {
                    int64_contents: vec![0; 10],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            check(&int64s)
                .unwrap_err()
                .contains("fp32_contents or bytes_contents")
        );
        let elements = proto::ModelInferRequest {
            inputs: vec![InferInputTensor {
                contents: Some(proto::InferTensorContents {
                    bytes_contents: vec![prost::bytes::Bytes::new(); MAX_BYTES_ELEMENTS + 1],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(check(&elements).is_err());
        let outputs = proto::ModelInferRequest {
            outputs: vec![InferRequestedOutputTensor::default(); 3],
            ..Default::default()
        };
        assert!(check(&outputs).is_err());
        let parameters = proto::ModelInferRequest {
            parameters: (0..17)
                .map(|i| (i.to_string(), proto::InferParameter::default()))
                .collect(),
            ..Default::default()
        };
        assert!(check(&parameters).is_err());
        // Truncated or with a wire type of groups: malformed.
        assert!(proto::ModelInferRequest::check(&[0x2a, 0x05, 0x00]).is_err());
        assert!(proto::ModelInferRequest::check(&[0x2b]).is_err());
    }
}
