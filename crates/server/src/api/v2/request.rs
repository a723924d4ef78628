//! An inference request's JSON, read within bounds whatever it holds.
//!
//! The envelope (the `id`, the parameters, the input's name, datatype and shape, the outputs)
//! is read by `#[derive(Deserialize)]`. The input's data are only located: a
//! [`RawValue`] borrowed from the body, kept as its span, and read by [`super::tensor`] once
//! the datatype and shape say how many elements to expect (so that what it reserves is exact).
//! Every list is bounded ([`Bounded`]), a second input is refused where it starts, fields the
//! protocol has but this model does not use are skipped unread, and no error quotes a string
//! the client sent ([`NoEcho`]).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{IMAGE_INPUT, MAX_DIMS, MAX_ID_BYTES, MAX_OUTPUTS, TENSOR_INPUT};

/// A request's JSON, its bounds checked.
pub(super) struct Request {
    pub id: Option<String>,
    /// `parameters.binary_data_output`.
    pub binary_output: bool,
    /// `parameters.method`, `.target` and `.steps`: what an explain request asks (an
    /// inference request's are not read).
    pub explain: ExplainParams,
    /// The one input (`None`: `"inputs": []`).
    pub input: Option<Input>,
    pub outputs: Option<Vec<OutputRequest>>,
}

/// The input, its data not yet read.
pub(super) struct Input {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// `parameters.binary_data_size`.
    pub binary_size: Option<u64>,
    /// `parameters.shared_memory_region` was given (not supported).
    pub shared_memory: bool,
    /// Where the `data` value is in the JSON, if given.
    pub data: Option<Range<usize>>,
}

/// Reads the envelope of `json`.
pub(super) fn read(json: &[u8]) -> Result<Request, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let NoEcho(envelope) = NoEcho::<Envelope>::deserialize(&mut de)?;
    de.end()?;
    let input = envelope.inputs.into_iter().next().map(|NoEcho(input)| {
        let data = input.data.map(|raw| {
            // The value borrows from `json`: its span is where it starts in it.
            let start = raw.get().as_ptr() as usize - json.as_ptr() as usize;
            start..start + raw.get().len()
        });
        Input {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            binary_size: input.parameters.0.binary_data_size.map(|s| s.0),
            shared_memory: input.parameters.0.shared_memory_region.is_some(),
            data,
        }
    });
    let params = envelope.parameters.0;
    Ok(Request {
        explain: ExplainParams {
            method: params.method.map(|t| t.0),
            target: params.target.map(|t| t.0),
            steps: params.steps.map(|s| s.0),
        },
        id: envelope.id,
        binary_output: params.binary_data_output.is_some_and(|b| b.0),
        input,
        outputs: envelope.outputs,
    })
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, deserialize_with = "id")]
    id: Option<String>,
    #[serde(default)]
    parameters: NoEcho<RequestParams>,
    #[serde(borrow, deserialize_with = "inputs")]
    inputs: Vec<NoEcho<InputEnvelope<'a>>>,
    #[serde(default, deserialize_with = "outputs")]
    outputs: Option<Vec<OutputRequest>>,
}

#[derive(Deserialize)]
struct InputEnvelope<'a> {
    name: String,
    datatype: String,
    #[serde(deserialize_with = "shape")]
    shape: Vec<i64>,
    #[serde(default)]
    parameters: NoEcho<InputParams>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct OutputRequest {
    pub name: String,
    #[serde(default)]
    pub parameters: NoEcho<OutputParams>,
}

#[derive(Deserialize, Default)]
pub(super) struct OutputParams {
    pub binary_data: Option<NoEcho<bool>>,
    pub classification: Option<NoEcho<u64>>,
    pub shared_memory_region: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct RequestParams {
    binary_data_output: Option<NoEcho<bool>>,
    method: Option<Short>,
    target: Option<Short>,
    steps: Option<NoEcho<u64>>,
}

/// The parameters of an explain request, as sent.
#[derive(Debug, Default)]
pub(super) struct ExplainParams {
    pub method: Option<String>,
    /// A class name, or an index (sent as a number or a string).
    pub target: Option<String>,
    pub steps: Option<u64>,
}

/// Longest text a [`Short`] parameter takes.
const SHORT_BYTES: usize = 64;

/// A parameter given as a short string (at most [`SHORT_BYTES`]; a longer one is refused by
/// its length, unquoted) or as an integer, kept as text.
struct Short(String);

impl<'de> Deserialize<'de> for Short {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ShortVisitor;
        impl Visitor<'_> for ShortVisitor {
            type Value = Short;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a string of at most {SHORT_BYTES} bytes, or an integer")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Short, E> {
                if v.len() > SHORT_BYTES {
                    return Err(string_here(v, &self));
                }
                Ok(Short(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Short, E> {
                Ok(Short(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Short, E> {
                Ok(Short(v.to_string()))
            }
        }
        d.deserialize_any(ShortVisitor)
    }
}

#[derive(Deserialize, Default)]
struct InputParams {
    binary_data_size: Option<NoEcho<u64>>,
    shared_memory_region: Option<IgnoredAny>,
}

fn id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let id = Option::<String>::deserialize(d)?;
    if id.as_ref().is_some_and(|id| id.len() > MAX_ID_BYTES) {
        return Err(de::Error::custom(format!(
            "id is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(id)
}

fn inputs<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<NoEcho<InputEnvelope<'a>>>, D::Error> {
    d.deserialize_any(Bounded::new(
        1,
        "input",
        // Refused where it starts, before any of it is read.
        concat!(
            ": this model takes exactly one input, 'image' (BYTES, encoded images) ",
            "or 'input' (FP32, [N, 3, 64, 64])"
        ),
    ))
}

fn outputs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<OutputRequest>>, D::Error> {
    d.deserialize_any(Bounded::new(
        MAX_OUTPUTS,
        "outputs",
        " (this model has two)",
    ))
    .map(|outputs| Some(outputs.into_iter().map(|o| o.0).collect()))
}

fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    d.deserialize_any(Bounded::new(MAX_DIMS, "dimensions", ""))
        .map(|dims| dims.into_iter().map(|d: NoEcho<i64>| d.0).collect())
}

/// A value of a type other than string, read so that a string in its place is refused without
/// being quoted back. `serde_json`'s own type error quotes the whole string, escaped (a 9 MiB
/// string of U+0080 made a 33 MB error, built inside the parse and sent back), so every place
/// of the request where a string does not belong is read through this or through a visitor of
/// ours that refuses strings with [`string_here`].
#[derive(Default)]
pub(super) struct NoEcho<T>(pub T);

/// What a [`NoEcho`] value is, for its error message.
trait Expected {
    const WHAT: &'static str;
}

impl Expected for bool {
    const WHAT: &'static str = "a boolean";
}
impl Expected for u64 {
    const WHAT: &'static str = "a non-negative integer";
}
impl Expected for i64 {
    const WHAT: &'static str = "an integer";
}
impl Expected for Envelope<'_> {
    const WHAT: &'static str = "an inference request object";
}
impl Expected for InputEnvelope<'_> {
    const WHAT: &'static str = "an input tensor object";
}
impl Expected for OutputRequest {
    const WHAT: &'static str = "an output object";
}
impl Expected for OutputParams {
    const WHAT: &'static str = "a parameters object";
}
impl Expected for RequestParams {
    const WHAT: &'static str = "a parameters object";
}
impl Expected for InputParams {
    const WHAT: &'static str = "a parameters object";
}

impl<'de, T: Deserialize<'de> + Expected> Deserialize<'de> for NoEcho<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoEchoVisitor(PhantomData)).map(NoEcho)
    }
}

/// Hands every JSON value but a string or a list on to `T` as it came (no value read through
/// it is a list).
struct NoEchoVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de> + Expected> Visitor<'de> for NoEchoVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::WHAT)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        T::deserialize(de::value::BoolDeserializer::new(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::deserialize(de::value::I64Deserializer::new(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::deserialize(de::value::U64Deserializer::new(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        T::deserialize(de::value::F64Deserializer::new(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        T::deserialize(de::value::UnitDeserializer::new())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Err(string_here(v, &self))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// The error for a string where `expected` belongs: it gives the string's length, never its
/// text.
pub(super) fn string_here<E: de::Error>(v: &str, expected: &dyn de::Expected) -> E {
    E::invalid_type(
        de::Unexpected::Other(&format!("a string of {} bytes", v.len())),
        expected,
    )
}

/// A list of at most `max` elements, each read through [`NoEcho`]; one more is refused where it
/// starts, unread.
struct Bounded<T> {
    max: usize,
    what: &'static str,
    /// Said after "more than {max} {what}".
    hint: &'static str,
    _of: PhantomData<T>,
}

impl<T> Bounded<T> {
    fn new(max: usize, what: &'static str, hint: &'static str) -> Self {
        Self {
            max,
            what,
            hint,
            _of: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de> + Expected> Visitor<'de> for Bounded<T> {
    type Value = Vec<NoEcho<T>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of at most {} {}", self.max, self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Err(string_here(v, &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while out.len() < self.max {
            match seq.next_element()? {
                Some(value) => out.push(value),
                None => return Ok(out),
            }
        }
        seq.next_element_seed(Refuse(&self))?;
        Ok(out)
    }
}

/// Refuses whatever value comes, unread: the place of one element too many.
struct Refuse<'b, T>(&'b Bounded<T>);

impl<'de, T> DeserializeSeed<'de> for Refuse<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        let Bounded {
            max, what, hint, ..
        } = self.0;
        Err(de::Error::custom(format!("more than {max} {what}{hint}")))
    }
}

/// The message for an input that is neither of the model's.
pub(super) fn unknown_input(name: &str) -> String {
    format!(
        "unknown input '{name}': this model takes '{IMAGE_INPUT}' (BYTES, encoded images) or '{TENSOR_INPUT}' (FP32, [N, 3, 64, 64])"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        match read(json.as_bytes()) {
            Ok(_) => panic!("{json:.100} was read"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_envelope_is_read_and_the_data_located() {
        let json = r#"{"id": "a", "parameters": {"binary_data_output": true, "x": [1]},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64],
                        "data": [[1, 2], [3]], "extra": {"deep": [[[]]]}}],
            "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}"#;
        let request = read(json.as_bytes()).unwrap();
        assert_eq!(request.id.as_deref(), Some("a"));
        assert!(request.binary_output);
        let input = request.input.unwrap();
        assert_eq!(
            (input.name.as_str(), input.datatype.as_str()),
            ("input", "FP32")
        );
        assert_eq!(input.shape, [1, 3, 64, 64]);
        assert_eq!(&json[input.data.unwrap()], "[[1, 2], [3]]");
        let outputs = request.outputs.unwrap();
        assert_eq!(
            outputs[0].parameters.0.classification.as_ref().unwrap().0,
            3
        );
    }

    #[test]
    fn every_list_is_bounded_and_the_extra_element_unread() {
        let input = r#"{"name": "image", "datatype": "BYTES", "shape": [1]}"#;
        let two = format!(r#"{{"inputs": [{input}, "{}"]}}"#, "x".repeat(10_000));
        assert!(error(&two).starts_with("more than 1 input: this model takes exactly one input"));
        let dims =
            r#"{"inputs": [{"name": "i", "datatype": "FP32", "shape": [1,1,1,1,1,1,1,1,1]}]}"#;
        assert!(
            error(dims).starts_with("more than 8 dimensions"),
            "{}",
            error(dims)
        );
        let outputs = r#"{"inputs": [], "outputs": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}"#;
        assert!(error(outputs).starts_with("more than 2 outputs (this model has two)"));
    }

    #[test]
    fn strings_out_of_place_are_not_quoted_back() {
        let long = "\u{80}".repeat(100_000);
        for json in [
            format!(r#""{long}""#),
            format!(r#"{{"inputs": "{long}"}}"#),
            format!(r#"{{"inputs": ["{long}"]}}"#),
            format!(r#"{{"parameters": "{long}", "inputs": []}}"#),
            format!(r#"{{"inputs": [], "outputs": ["{long}"]}}"#),
            format!(r#"{{"inputs": [{{"name": "a", "datatype": "b", "shape": "{long}"}}]}}"#),
            format!(
                r#"{{"inputs": [], "outputs": [{{"name": "logits", "parameters": {{"binary_data": "{long}"}}}}]}}"#
            ),
        ] {
            let e = error(&json);
            assert!(e.len() < 200, "{e:.300}");
            assert!(e.contains("a string of 200000 bytes"), "{e}");
        }
    }

    #[test]
    fn fields_once_and_required() {
        assert!(error(r#"{"inputs": [], "inputs": []}"#).contains("duplicate field `inputs`"));
        assert!(error(r#"{"id": "a"}"#).contains("missing field `inputs`"));
        let no_shape = r#"{"inputs": [{"name": "image", "datatype": "BYTES"}]}"#;
        assert!(error(no_shape).contains("missing field `shape`"));
        let long_id = format!(
            r#"{{"id": "{}", "inputs": []}}"#,
            "x".repeat(MAX_ID_BYTES + 1)
        );
        assert!(error(&long_id).contains("id is longer than 1024 bytes"));
        assert!(error(r#"{"inputs": []} x"#).contains("trailing characters"));
    }
}
