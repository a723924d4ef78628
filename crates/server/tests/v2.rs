//! The Open Inference Protocol (`KServe` V2) end to end: a real server on 127.0.0.1, real CIFAR
//! JPEGs, JSON and binary tensor data, answers checked against `/classify`'s and against the
//! model run in-process; every error in the protocol's `{"error": ...}` form with its status;
//! the bounds of the original API (body size and memory, image permits, decode memory,
//! `--max-files`) holding on `/v2` too. The last test drives the server binary with Triton's own
//! Python client (`tritonclient[http]`, in a virtual environment `scripts/v2-client-test` makes
//! under `target/` when it is missing).

use std::collections::HashMap;
use std::path::Path;

use crate::common::{self, Process, TestServer, agent, get, get_reply, start};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use model::{Backend, CLASSES, Inference, Preprocessor, softmax, testdata};
use serde_json::{Value, json};
use server::ServerConfig;
use server::inference::engine::BatchPolicy;
use server::ingest::upload::UploadLimits;

const MODEL: &str = "/v2/models/cifar10-cnn";
const INFER: &str = "/v2/models/cifar10-cnn/infer";

/// An answer with its body as bytes (binary outputs follow the JSON).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Where the JSON ends: `Inference-Header-Content-Length`, or the whole body.
    fn json_len(&self) -> usize {
        self.header("inference-header-content-length")
            .map_or(self.body.len(), |v| v.parse().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body[..self.json_len()]).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.json_len()])
            )
        })
    }

    /// The protocol's error message, checking its form.
    fn error(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        v["error"].as_str().unwrap().to_string()
    }

    /// Every output by name: its shape and values, from the JSON or the binary part.
    fn outputs(&self) -> HashMap<String, (Vec<usize>, Values)> {
        assert_eq!(
            self.status,
            200,
            "{}",
            String::from_utf8_lossy(&self.body[..self.json_len()])
        );
        let v = self.json();
        let mut binary = &self.body[self.json_len()..];
        let mut out = HashMap::new();
        for o in v["outputs"].as_array().unwrap() {
            let shape: Vec<usize> = serde_json::from_value(o["shape"].clone()).unwrap();
            let values = match o["parameters"]["binary_data_size"].as_u64() {
                Some(size) => {
                    let (mine, rest) = binary.split_at(size as usize);
                    binary = rest;
                    match o["datatype"].as_str().unwrap() {
                        "FP32" => Values::Floats(
                            mine.chunks_exact(4)
                                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                                .collect(),
                        ),
                        "BYTES" => Values::Strings(
                            split_bytes(mine)
                                .into_iter()
                                .map(|b| String::from_utf8(b).unwrap())
                                .collect(),
                        ),
                        other => panic!("datatype {other}"),
                    }
                }
                None => match o["datatype"].as_str().unwrap() {
                    "FP32" => Values::Floats(
                        o["data"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap() as f32)
                            .collect(),
                    ),
                    "BYTES" => Values::Strings(
                        o["data"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_str().unwrap().to_string())
                            .collect(),
                    ),
                    other => panic!("datatype {other}"),
                },
            };
            out.insert(o["name"].as_str().unwrap().to_string(), (shape, values));
        }
        assert!(binary.is_empty(), "bytes left after the outputs");
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Values {
    Floats(Vec<f32>),
    Strings(Vec<String>),
}

impl Values {
    fn floats(&self) -> &[f32] {
        match self {
            Values::Floats(v) => v,
            Values::Strings(_) => panic!("not FP32"),
        }
    }
    fn strings(&self) -> &[String] {
        match self {
            Values::Strings(v) => v,
            Values::Floats(_) => panic!("not BYTES"),
        }
    }
}

fn split_bytes(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        out.push(data[4..4 + len].to_vec());
        data = &data[4 + len..];
    }
    out
}

fn length_prefixed<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

fn send(base: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
    let mut req = agent().post(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let mut res = req.send(body).expect("request failed");
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Answer {
        status: res.status().as_u16(),
        headers,
        body: res
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap_or_default(),
    }
}

fn post_json(s: &TestServer, path: &str, request: &Value) -> Answer {
    send(
        &s.base,
        path,
        &[("Content-Type", "application/json".into())],
        request.to_string().as_bytes(),
    )
}

/// A request with the binary tensor data extension: `request`'s JSON, then `data`.
fn post_binary(base: &str, path: &str, request: &Value, data: &[u8]) -> Answer {
    let json = request.to_string();
    let mut body = json.clone().into_bytes();
    body.extend_from_slice(data);
    send(
        base,
        path,
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("Inference-Header-Content-Length", json.len().to_string()),
        ],
        &body,
    )
}

fn get_answer(s: &TestServer, path: &str) -> Answer {
    let r = get_reply(s, path, &[]);
    Answer {
        status: r.status,
        headers: r.headers,
        body: r.body.into_bytes(),
    }
}

fn images_request<B: AsRef<[u8]>>(files: &[B]) -> Value {
    json!({
        "inputs": [{
            "name": "image",
            "datatype": "BYTES",
            "shape": [files.len()],
            "data": files.iter().map(|f| BASE64.encode(f.as_ref())).collect::<Vec<_>>(),
        }]
    })
}

fn tensor_request(pixels: &[f32]) -> Value {
    json!({
        "inputs": [{
            "name": "input",
            "datatype": "FP32",
            "shape": [pixels.len() / model::IMAGE_FLOATS, 3, 64, 64],
            "data": pixels,
        }]
    })
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-5
}

/// Two answers' outputs agree: the same names, shapes and strings, floats within 1e-5 (two
/// requests may be batched differently).
fn same_outputs(
    a: &HashMap<String, (Vec<usize>, Values)>,
    b: &HashMap<String, (Vec<usize>, Values)>,
) {
    assert_eq!(a.len(), b.len());
    for (name, (shape, values)) in a {
        let (other_shape, other) = &b[name];
        assert_eq!(shape, other_shape, "{name}");
        match (values, other) {
            (Values::Floats(x), Values::Floats(y)) => {
                assert_eq!(x.len(), y.len());
                for (p, q) in x.iter().zip(y) {
                    assert!(close(*p, *q), "{name}: {p} vs {q}");
                }
            }
            (x, y) => assert_eq!(x, y, "{name}"),
        }
    }
}

/// `/classify`'s answer for one image.
fn classify(base: &str, image: &[u8]) -> Value {
    let r = send(
        base,
        "/classify",
        &[("Content-Type", "image/jpeg".into())],
        image,
    );
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

/// Row `i` of probabilities agrees with `/classify`'s answer for the same image: its best
/// class and each top-3 confidence (looked up by class index, so near-ties cannot flip it).
fn agrees(probs: &[f32], classified: &Value) {
    for entry in classified["top_3_predictions"].as_array().unwrap() {
        let index = entry["class_index"].as_u64().unwrap() as usize;
        let confidence = entry["confidence"].as_f64().unwrap() as f32;
        assert!(
            close(probs[index], confidence),
            "{} vs {classified}",
            probs[index]
        );
    }
    let best = classified["prediction"]["confidence"].as_f64().unwrap() as f32;
    let max = probs.iter().copied().fold(f32::MIN, f32::max);
    assert!(close(max, best), "{probs:?} vs {classified}");
}

#[test]
fn metadata_health_and_readiness() {
    let s = start(ServerConfig::default());
    let server = get_answer(&s, "/v2");
    assert_eq!(server.status, 200);
    let v = server.json();
    assert_eq!(v["name"], "cifar-cnn");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let extensions = v["extensions"].as_array().unwrap();
    assert!(extensions.contains(&json!("classification")), "{v}");
    assert!(extensions.contains(&json!("binary_tensor_data")), "{v}");

    assert_eq!(get(&s, "/v2/health/live"), (200, r#"{"live":true}"#.into()));
    assert_eq!(
        get(&s, "/v2/health/ready"),
        (200, r#"{"ready":true}"#.into())
    );
    let ready = get_answer(&s, &format!("{MODEL}/ready")).json();
    assert_eq!(ready, json!({"name": "cifar10-cnn", "ready": true}));

    // The version names the record: here the test weights, which were never saved.
    let version = common::test_version();
    let meta = get_answer(&s, MODEL);
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["name"], "cifar10-cnn");
    assert_eq!(meta["versions"], json!([version]));
    assert_eq!(meta["platform"], "burn");
    assert_eq!(
        meta["inputs"],
        json!([
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]},
        ])
    );
    assert_eq!(
        meta["outputs"],
        json!([
            {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ])
    );
    assert_eq!(
        get_answer(&s, &format!("{MODEL}/versions/{version}")).json(),
        meta
    );
    assert_eq!(get(&s, &format!("{MODEL}/versions/{version}/ready")).0, 200);

    // Unknown models, versions and paths: 404 in the protocol's form.
    for path in [
        "/v2/models/resnet50",
        "/v2/models/resnet50/ready",
        "/v2/models/cifar10-cnn/versions/7",
        "/v2/models/cifar10-cnn/versions/7/ready",
        "/v2/repository/index",
        "/v2/models/cifar10-cnn/trace/setting",
        "/v2/models/resnet50/config",
        "/v2/models/cifar10-cnn/versions/7/stats",
    ] {
        let r = get_answer(&s, path);
        assert_eq!(r.status, 404, "{path}");
        let error = r.error();
        assert!(!error.is_empty(), "{path}");
    }
    assert!(
        get_answer(&s, "/v2/models/resnet50")
            .error()
            .contains("unknown model 'resnet50'")
    );
    let r = post_json(&s, "/v2/models/resnet50/infer", &json!({"inputs": []}));
    assert_eq!(r.status, 404);
    assert!(r.error().contains("unknown model"));
    let r = post_json(
        &s,
        "/v2/models/cifar10-cnn/versions/7/infer",
        &json!({"inputs": []}),
    );
    assert_eq!(r.status, 404);

    // A method a /v2 path does not serve: 405 with Allow, in the protocol's form.
    let r = send(&s.base, "/v2/health/live", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    assert!(r.error().contains("not allowed"));

    // The OpenAPI document describes the endpoints and names the served version.
    let spec: Value = serde_json::from_str(&get(&s, "/openapi.json").1).unwrap();
    for path in [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} undocumented");
    }
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["ModelVersion"]["example"],
        json!(common::test_version())
    );
    assert_eq!(
        schemas["ModelVersion"]["pattern"],
        model::RecordVersion::LABEL_PATTERN
    );
    assert_eq!(schemas["ModelName"]["enum"], json!(["cifar10-cnn"]));
    let infer = &spec["paths"]["/v2/models/{name}/infer"]["post"];
    for status in ["200", "400", "404", "408", "413", "500", "503"] {
        assert!(infer["responses"][status].is_object(), "{status}");
    }
}

/// JSON requests of both input kinds answer what `/classify` answers for the same real
/// CIFAR-10 images, with the logits the model gives in-process.
#[test]
fn json_images_and_tensors_answer_as_classify() {
    let s = start(ServerConfig::default());
    let images = testdata::images("test", 1);
    let files: Vec<&[u8]> = images.iter().map(|i| i.bytes.as_slice()).collect();
    let n = files.len();
    assert_eq!(n, 10);

    let mut request = images_request(&files);
    request["id"] = json!("req-7");
    let r = post_json(&s, INFER, &request);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["model_name"], "cifar10-cnn");
    assert_eq!(v["model_version"], common::test_version());
    assert_eq!(v["id"], "req-7");
    let outputs = r.outputs();
    // Both outputs by default, logits first.
    assert_eq!(v["outputs"][0]["name"], "logits");
    assert_eq!(v["outputs"][1]["name"], "probabilities");
    let (shape, probs) = &outputs["probabilities"];
    assert_eq!(shape, &[n, 10]);
    let (shape, logits) = &outputs["logits"];
    assert_eq!(shape, &[n, 10]);

    let pre = Preprocessor::default();
    let pixels: Vec<f32> = files
        .iter()
        .flat_map(|f| pre.preprocess(f).unwrap())
        .collect();
    let local = Inference::new(s.model.clone(), Backend::default_inference()).unwrap();
    let want_logits = local.logits(&pixels);
    for (got, want) in logits.floats().iter().zip(&want_logits) {
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    for (got, want) in probs
        .floats()
        .iter()
        .zip(softmax(logits.floats(), CLASSES.len()))
    {
        assert!(close(*got, want));
    }
    for (i, file) in files.iter().enumerate() {
        agrees(
            &probs.floats()[i * 10..(i + 1) * 10],
            &classify(&s.base, file),
        );
    }

    // The same images as preprocessed tensors: the same answers.
    let r = post_json(&s, INFER, &tensor_request(&pixels));
    let tensor_outputs = r.outputs();
    for name in ["logits", "probabilities"] {
        let (shape, values) = &tensor_outputs[name];
        assert_eq!(shape, &[n, 10]);
        for (a, b) in values.floats().iter().zip(outputs[name].1.floats()) {
            assert!(close(*a, *b), "{name}: {a} vs {b}");
        }
    }
    // Nested data are the same tensor.
    let nested: Vec<Vec<f32>> = pixels
        .chunks(model::IMAGE_FLOATS)
        .map(<[f32]>::to_vec)
        .collect();
    let mut request = tensor_request(&pixels);
    request["inputs"][0]["data"] = json!(nested);
    request["outputs"] = json!([{"name": "probabilities"}]);
    let nested_outputs = post_json(&s, INFER, &request).outputs();
    assert_eq!(nested_outputs.len(), 1);
    let probabilities = |outputs: &HashMap<String, (Vec<usize>, Values)>| {
        HashMap::from([(
            "probabilities".to_string(),
            outputs["probabilities"].clone(),
        )])
    };
    same_outputs(&nested_outputs, &probabilities(&tensor_outputs));

    // The classification extension: the best three, as Triton writes them.
    let mut request = images_request(&files);
    request["outputs"] = json!([{"name": "probabilities", "parameters": {"classification": 3}}]);
    let r = post_json(&s, INFER, &request);
    let v = r.json();
    assert_eq!(v["outputs"][0]["datatype"], "BYTES");
    let (shape, top) = &r.outputs()["probabilities"];
    assert_eq!(shape, &[n, 3]);
    for (i, row) in top.strings().chunks(3).enumerate() {
        let mut last = f32::MAX;
        for entry in row {
            let parts: Vec<&str> = entry.split(':').collect();
            assert_eq!(parts.len(), 3, "{entry}");
            let value: f32 = parts[0].parse().unwrap();
            let index: usize = parts[1].parse().unwrap();
            assert_eq!(parts[2], CLASSES[index]);
            assert_eq!(value, probs.floats()[i * 10 + index], "{entry}");
            assert!(value <= last);
            last = value;
        }
    }
}

/// The binary tensor data extension, as `tritonclient` sends and reads it: the same answers as
/// JSON.
#[test]
fn binary_tensor_data_in_and_out() {
    let s = start(ServerConfig::default());
    let images: Vec<_> = testdata::images("test", 1).into_iter().take(4).collect();
    let files: Vec<&[u8]> = images.iter().map(|i| i.bytes.as_slice()).collect();
    let json_answer = post_json(&s, INFER, &images_request(&files)).outputs();

    // BYTES in binary, outputs binary by the request's parameter.
    let data = length_prefixed(files.iter().copied());
    let request = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{
            "name": "image", "datatype": "BYTES", "shape": [files.len(), 1],
            "parameters": {"binary_data_size": data.len()},
        }],
    });
    let r = post_binary(&s.base, INFER, &request, &data);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert!(r.json_len() < r.body.len());
    let v = r.json();
    for o in v["outputs"].as_array().unwrap() {
        assert!(o.get("data").is_none(), "{o}");
        assert_eq!(o["parameters"]["binary_data_size"], 4 * 10 * 4);
    }
    same_outputs(&r.outputs(), &json_answer);

    // FP32 in binary; one output binary, one classification in JSON, one binary classification.
    let pre = Preprocessor::default();
    let floats: Vec<u8> = files
        .iter()
        .flat_map(|f| pre.preprocess(f).unwrap())
        .flat_map(f32::to_le_bytes)
        .collect();
    let request = json!({
        "inputs": [{
            "name": "input", "datatype": "FP32", "shape": [files.len(), 3, 64, 64],
            "parameters": {"binary_data_size": floats.len()},
        }],
        "outputs": [
            {"name": "logits", "parameters": {"binary_data": true}},
            {"name": "probabilities", "parameters": {"binary_data": false, "classification": 2}},
        ],
    });
    let r = post_binary(&s.base, INFER, &request, &floats);
    let outputs = r.outputs();
    let v = r.json();
    assert!(v["outputs"][0].get("data").is_none());
    assert!(v["outputs"][1]["data"].is_array());
    let (_, logits) = &outputs["logits"];
    for (a, b) in logits.floats().iter().zip(json_answer["logits"].1.floats()) {
        assert!(close(*a, *b));
    }
    let (shape, top) = &outputs["probabilities"];
    assert_eq!(shape, &[4, 2]);
    let probs = json_answer["probabilities"].1.floats();
    for (i, row) in top.strings().chunks(2).enumerate() {
        let index: usize = row[0].split(':').nth(1).unwrap().parse().unwrap();
        let max = probs[i * 10..(i + 1) * 10]
            .iter()
            .copied()
            .fold(f32::MIN, f32::max);
        assert!(close(probs[i * 10 + index], max), "{row:?}");
    }

    let request = json!({
        "inputs": [{
            "name": "input", "datatype": "FP32", "shape": [files.len(), 3, 64, 64],
            "parameters": {"binary_data_size": floats.len()},
        }],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true, "classification": 10}}],
    });
    let (shape, all) = &post_binary(&s.base, INFER, &request, &floats).outputs()["logits"];
    assert_eq!(shape, &[4, 10]);
    assert_eq!(all.strings().len(), 40);
}

/// What a request gets wrong is a 400 (a 404, 413) in the protocol's form, with a message that
/// says what.
#[test]
fn bad_requests_are_refused_in_the_protocol_form() {
    let s = start(ServerConfig::default());
    let image = testdata::images("test", 1).remove(0).bytes;
    let pixels = Preprocessor::default().preprocess(&image).unwrap();
    let refused = |request: Value, status: u16, says: &str| {
        let r = post_json(&s, INFER, &request);
        assert_eq!(r.status, status, "{request:.200}");
        let error = r.error();
        assert!(error.contains(says), "{error:?} does not say {says:?}");
    };
    let one = images_request(&[&image]);
    let with = |path: &str, value: Value| {
        let mut request = one.clone();
        let mut at = &mut request;
        for key in path.split('.') {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[key],
            };
        }
        *at = value;
        request
    };

    let r = send(
        &s.base,
        INFER,
        &[("Content-Type", "application/json".into())],
        b"{\"inputs\": [",
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("malformed inference request"));
    refused(json!({}), 400, "missing field `inputs`");
    let r = send(
        &s.base,
        INFER,
        &[("Content-Encoding", "gzip".into())],
        one.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.error()
            .contains("Content-Encoding 'gzip' is not supported")
    );
    refused(json!({"inputs": []}), 400, "no input");
    refused(
        with("inputs.0.name", json!("pixels")),
        400,
        "unknown input 'pixels'",
    );
    refused(with("inputs.0.datatype", json!("FP32")), 400, "is BYTES");
    refused(with("inputs.0.shape", json!([2])), 400, "but 1 elements");
    refused(with("inputs.0.shape", json!([1, 3])), 400, "[N] or [N, 1]");
    refused(with("inputs.0.shape", json!([0])), 400, "no image");
    refused(with("inputs.0.data", json!(["%%%"])), 400, "not base64");
    refused(with("inputs.0.data", json!([1.5])), 400, "base64 string");
    refused(with("inputs.0.data", json!([true])), 400, "invalid type");
    refused(with("inputs.0.data", json!([""])), 400, "element 0");
    let mut two = one.clone();
    two["inputs"]
        .as_array_mut()
        .unwrap()
        .push(one["inputs"][0].clone());
    refused(two, 400, "exactly one input");
    refused(
        images_request(&[image.as_slice(), b"not an image".as_slice()]),
        400,
        "input 'image', element 1: unsupported or unrecognised image format",
    );
    refused(
        with("outputs", json!([{"name": "scores"}])),
        400,
        "unknown output 'scores'",
    );
    refused(
        with("outputs", json!([{"name": "logits"}, {"name": "logits"}])),
        400,
        "twice",
    );
    refused(with("outputs", json!([])), 400, "no output");
    for k in [0, 11] {
        refused(
            with(
                "outputs",
                json!([{"name": "logits", "parameters": {"classification": k}}]),
            ),
            400,
            "classification must ask for 1 to 10",
        );
    }
    refused(with("id", json!("x".repeat(2000))), 400, "id is longer");

    let tensor = tensor_request(&pixels);
    let mut wrong = tensor.clone();
    wrong["inputs"][0]["shape"] = json!([1, 3, 32, 32]);
    refused(wrong, 400, "[N, 3, 64, 64]");
    let mut short = tensor.clone();
    short["inputs"][0]["data"] = json!(&pixels[..100]);
    refused(short, 400, "but 100 values");
    let mut strings = tensor.clone();
    strings["inputs"][0]["data"] = json!(["AAAA"]);
    refused(strings, 400, "not strings");

    // More images than --max-files (64): 413, from the shape or from the data.
    let mut many = one.clone();
    many["inputs"][0]["shape"] = json!([65]);
    refused(many, 413, "65 images in one request");
    let mut many_files = images_request(&vec![image.as_slice(); 65]);
    many_files["inputs"][0]["shape"] = json!([64]);
    refused(many_files, 413, "65 images in one request");

    // Binary tensor data that do not add up.
    let data = length_prefixed([image.as_slice()]);
    let binary = json!({"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [1],
        "parameters": {"binary_data_size": data.len()},
    }]});
    let r = post_binary(&s.base, INFER, &binary, &data[..data.len() - 1]);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("binary_data_size"), "{}", r.error());
    let mut cut = binary.clone();
    cut["inputs"][0]["parameters"]["binary_data_size"] = json!(data.len() - 1);
    let r = post_binary(&s.base, INFER, &cut, &data[..data.len() - 1]);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("cut short"), "{}", r.error());
    let r = send(
        &s.base,
        INFER,
        &[("Inference-Header-Content-Length", "999999".into())],
        binary.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("Inference-Header-Content-Length"));
    let mut nan = pixels.clone();
    nan[5] = f32::NAN;
    let raw: Vec<u8> = nan.iter().flat_map(|v| v.to_le_bytes()).collect();
    let request = json!({"inputs": [{
        "name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64],
        "parameters": {"binary_data_size": raw.len()},
    }]});
    let r = post_binary(&s.base, INFER, &request, &raw);
    assert_eq!(r.status, 400);
    assert!(r.error().contains("value 5 is not a finite number"));
}

/// The original API's bounds hold on /v2: body size (413) and body memory (503), image permits
/// (503 with Retry-After), decode memory (400 for an image, 413 for a tensor).
#[test]
fn the_servers_bounds_hold_on_v2() {
    let image = testdata::images("test", 1).remove(0).bytes;
    let pixels = Preprocessor::default().preprocess(&image).unwrap();

    let s = start(ServerConfig {
        upload: UploadLimits {
            body: 64 * 1024,
            files: 4,
        },
        ..ServerConfig::default()
    });
    let big = vec![7u8; 30_000];
    let r = post_json(&s, INFER, &images_request(&[&big, &big, &big]));
    assert_eq!(r.status, 413);
    assert!(r.error().contains("exceeds the limit of 65536 bytes"));
    let r = post_json(&s, INFER, &images_request(&[&image; 5]));
    assert_eq!(r.status, 413);

    // The image permits: 3 images where 2 may be admitted.
    let s = start(ServerConfig {
        batch: BatchPolicy {
            max_images: 2,
            ..ServerConfig::default().batch
        },
        ..ServerConfig::default()
    });
    let r = post_json(&s, INFER, &images_request(&[&image; 3]));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.error().contains("capacity"));
    let raw: Vec<u8> = pixels
        .iter()
        .chain(&pixels)
        .chain(&pixels)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let request = json!({"inputs": [{
        "name": "input", "datatype": "FP32", "shape": [3, 3, 64, 64],
        "parameters": {"binary_data_size": raw.len()},
    }]});
    let r = post_binary(&s.base, INFER, &request, &raw);
    assert_eq!(r.status, 503);
    assert_eq!(
        post_json(&s, INFER, &images_request(&[&image; 2])).status,
        200
    );

    // Body memory: a body larger than what all bodies together may hold.
    let s = start(ServerConfig {
        body_memory: 4096,
        ..ServerConfig::default()
    });
    let r = post_json(&s, INFER, &images_request(&[&image; 8]));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));

    // Decode memory: 80 KiB holds one tensor image (48 KiB) but not two, a CIFAR JPEG (74 KiB
    // to decode) but no large image.
    let s = start(ServerConfig {
        decode_memory: 80 * 1024,
        ..ServerConfig::default()
    });
    let request = json!({"inputs": [{
        "name": "input", "datatype": "FP32", "shape": [2, 3, 64, 64],
        "parameters": {"binary_data_size": 2 * pixels.len() * 4},
    }]});
    let r = post_binary(&s.base, INFER, &request, &raw[..2 * pixels.len() * 4]);
    assert_eq!(r.status, 413);
    assert!(r.error().contains("decode memory"), "{}", r.error());
    let one: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut request = request;
    request["inputs"][0]["shape"] = json!([1, 3, 64, 64]);
    request["inputs"][0]["parameters"]["binary_data_size"] = json!(one.len());
    assert_eq!(post_binary(&s.base, INFER, &request, &one).status, 200);
    assert_eq!(post_json(&s, INFER, &tensor_request(&pixels)).status, 200);
    let photo = {
        let img = image::RgbImage::from_fn(512, 512, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let r = post_json(&s, INFER, &images_request(&[&image, &photo]));
    assert_eq!(r.status, 400);
    let error = r.error();
    assert!(
        error.contains("element 1") && error.contains("decode memory"),
        "{error}"
    );
}

/// Runs `scripts/v2-client-test` with `args` on `images` ([`client_test_dir`]), asserts it
/// succeeded, and gives its output.
fn client_test(images: &[testdata::ArchiveImage], args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = client_test_dir(images);
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/v2-client-test"))
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run scripts/v2-client-test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/v2-client-test {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// The folder `scripts/v2-client-test` reads: `images` as `NN.jpg`, and `pixels.f32`, the same
/// images preprocessed by the model crate.
fn client_test_dir(images: &[testdata::ArchiveImage]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pre = Preprocessor::default();
    let mut pixels = Vec::new();
    for (i, img) in images.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i:02}.jpg")), &img.bytes).unwrap();
        pixels.extend(
            pre.preprocess(&img.bytes)
                .unwrap()
                .into_iter()
                .flat_map(f32::to_le_bytes),
        );
    }
    std::fs::write(dir.path().join("pixels.f32"), pixels).unwrap();
    dir
}

/// Triton's own Python client (`tritonclient[http]`, binary tensor data by default) against the
/// real server binary with the shipped model: metadata, BYTES images and FP32 tensors in binary
/// and in JSON, classification top-3, errors; every answer equal to `/classify`'s.
#[test]
fn tritonclient_agrees_with_classify() {
    let server = Process::start(&[]);
    let images = testdata::images("test", 2);
    let stdout = client_test(&images, &["--url", &server.addr]);
    assert!(
        stdout.contains(&format!("ok: {} images", images.len())),
        "{stdout}"
    );
}

/// The `model_configuration` and `statistics` extensions: Triton's configuration of what the
/// model takes, and counts that follow the requests served (a batch of 3 images is one model
/// call of batch size 3, a failed request is counted as failed).
#[test]
fn model_configuration_and_statistics() {
    let s = start(ServerConfig::default());
    let (status, body) = get(&s, "/v2");
    assert_eq!(status, 200);
    let extensions: Value = serde_json::from_str(&body).unwrap();
    for e in ["model_configuration", "statistics"] {
        assert!(
            extensions["extensions"]
                .as_array()
                .unwrap()
                .contains(&json!(e))
        );
    }
    let (status, body) = get(&s, "/v2/models/cifar10-cnn/config");
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["name"], "cifar10-cnn");
    assert_eq!(config["max_batch_size"], 64);
    assert_eq!(config["input"][0]["name"], "image");
    assert_eq!(config["input"][0]["data_type"], "TYPE_STRING");
    assert_eq!(config["input"][0]["optional"], true);
    assert_eq!(config["input"][1]["dims"], json!([3, 64, 64]));
    assert_eq!(config["input"][1]["format"], "FORMAT_NCHW");
    assert_eq!(config["output"][1]["name"], "probabilities");
    assert_eq!(config["output"][1]["dims"], json!([10]));
    assert_eq!(
        config["dynamic_batching"]["preferred_batch_size"],
        json!([64])
    );

    let stats = |path: &str| -> Value {
        let (status, body) = get(&s, path);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["model_stats"][0].clone()
    };
    let before = stats("/v2/models/cifar10-cnn/stats");
    assert_eq!(before["inference_count"], 0);
    let images = testdata::images("test", 1);
    let three: Vec<&[u8]> = images.iter().take(3).map(|i| i.bytes.as_slice()).collect();
    assert_eq!(post_json(&s, INFER, &images_request(&three)).status, 200);
    assert_eq!(
        post_json(&s, INFER, &images_request(&[b"not an image"])).status,
        400
    );
    let after = stats("/v2/models/stats");
    assert_eq!(after["inference_count"], 3);
    assert_eq!(after["execution_count"], 1);
    assert_eq!(after["inference_stats"]["success"]["count"], 1);
    assert_eq!(after["inference_stats"]["compute_infer"]["count"], 1);
    assert_eq!(after["batch_stats"][0]["batch_size"], 3);
    assert!(after["last_inference"].as_u64().unwrap() > 0);
    let version = after["version"].as_str().unwrap().to_string();
    let versioned = stats(&format!("/v2/models/cifar10-cnn/versions/{version}/stats"));
    assert_eq!(versioned["inference_count"], 3);
}

/// `--model-name` names the model on every `/v2` path (and in the OpenAPI document), and
/// `--model` takes a folder holding one record, as `KServe` mounts a model at `/mnt/models`.
#[test]
fn the_model_is_served_under_its_name_from_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let record = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/model.safetensors");
    std::fs::copy(&record, dir.path().join("cifar.safetensors")).unwrap();
    let folder = dir.path().to_str().unwrap();
    let server = Process::start(&["--model", folder, "--model-name", "my-cifar"]);
    let (status, body) = server.get("/v2/models/my-cifar");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"my-cifar""#), "{body}");
    let (status, body) = server.get("/v2/models/cifar10-cnn/ready");
    assert_eq!(status, 404);
    assert!(body.contains("this server serves 'my-cifar'"), "{body}");
    let (_, info) = server.get("/model/info");
    assert!(info.contains("cifar.safetensors"), "{info}");
    let (_, doc) = server.get("/openapi.json");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["components"]["schemas"]["ModelName"]["enum"],
        json!(["my-cifar"])
    );

    // A folder of two records is refused at start, naming both.
    std::fs::copy(&record, dir.path().join("other.safetensors")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--port", "0", "--model", folder])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 *.safetensors files: cifar.safetensors, other.safetensors"),
        "{stderr}"
    );
}

/// The protocol over gRPC (`--grpc-port`) with Triton's own client, `tritonclient[grpc]`, on
/// 20 real CIFAR-10 test images: health (`grpc.health.v1`), metadata, the model configuration
/// and statistics, BYTES and FP32 inference agreeing with `/classify`, errors as gRPC codes, a
/// message over `--max-body`, an overload answer, and one model batch made of a gRPC request
/// and an HTTP one (`scripts/v2-client-test.py`, `grpc_checks`).
#[test]
fn tritonclient_grpc_agrees_with_classify() {
    let server = Process::start(&[
        "--grpc-port",
        "0",
        "--max-batch",
        "20",
        "--max-images",
        "40",
        "--max-files",
        "40",
        "--max-wait-ms",
        "3000",
        "--max-body",
        "2000000",
    ]);
    let grpc = server.grpc_addr();
    let images = testdata::images("test", 2);
    assert_eq!(images.len(), 20);
    let stdout = client_test(&images, &["--url", &server.addr, "--grpc-url", &grpc]);
    assert!(
        stdout.contains("ok: 20 images through tritonclient[grpc]"),
        "{stdout}"
    );
}

/// With `--api-key`, gRPC asks for the key where HTTP does: every call but the probes
/// (`grpc.health.v1`, `ServerLive`, `ServerReady`) answers `UNAUTHENTICATED` without
/// `authorization: Bearer <key>` or with another key.
#[test]
fn grpc_asks_for_the_api_key_where_http_does() {
    use prost::Message;
    use server::api::v2::proto;
    const UNAUTHENTICATED: i32 = 16;
    let server = Process::start_with_env(&["--grpc-port", "0"], &[("CNN_API_KEY", "s3cret")]);
    let grpc = server.grpc_addr();
    let metadata = proto::ModelMetadataRequest {
        name: "cifar10-cnn".into(),
        version: String::new(),
    }
    .encode_to_vec();
    let call = |path: &str, message: &[u8], key: Option<&str>| {
        common::grpc_call(&grpc, path, message, key)
            .expect("an answer")
            .0
    };
    let meta_path = "/inference.GRPCInferenceService/ModelMetadata";
    assert_eq!(call(meta_path, &metadata, None), UNAUTHENTICATED);
    assert_eq!(call(meta_path, &metadata, Some("guess")), UNAUTHENTICATED);
    assert_eq!(call(meta_path, &metadata, Some("s3cret")), 0);
    let (code, answer) = common::grpc_call(&grpc, meta_path, &metadata, Some("s3cret")).unwrap();
    assert_eq!(code, 0);
    let answer = proto::ModelMetadataResponse::decode(answer.as_slice()).unwrap();
    assert_eq!(answer.name, "cifar10-cnn");
    let infer = "/inference.GRPCInferenceService/ModelInfer";
    assert_eq!(call(infer, &[], None), UNAUTHENTICATED);
    // The probes stay open.
    assert!(
        common::grpc_health_becomes(&grpc, 1),
        "gRPC health: SERVING"
    );
    assert_eq!(
        call("/inference.GRPCInferenceService/ServerLive", &[], None),
        0
    );
    assert_eq!(
        call("/inference.GRPCInferenceService/ServerReady", &[], None),
        0
    );
}

/// The server binary at small settings (a bound of about 124 MiB, as `tests/memory.rs` runs it)
/// under hundreds of concurrent `/v2` requests of the shapes that cost the most memory per byte
/// sent: JSON numbers as short as they come ("0,0,0,..."), binary FP32 tensors, and 64 one-pixel
/// PNGs in binary `BYTES`. Each is answered (200, 400, or 503 at once when there is no room),
/// `/health` keeps answering, and the process's peak RSS stays under the bound.
#[test]
fn hostile_v2_requests_stay_within_the_memory_bound() {
    let server = Process::start(&common::SMALL_ARGS);

    // JSON zeros: 1 MiB holds half a million numbers (too few for the shape: 400 once parsed).
    let zeros = {
        let head = r#"{"inputs":[{"name":"input","datatype":"FP32","shape":[64,3,64,64],"data":["#;
        let mut body = head.as_bytes().to_vec();
        while body.len() < (1 << 20) - 8 {
            body.extend_from_slice(b"0,");
        }
        body.extend_from_slice(b"0]}]}");
        body
    };
    // Binary FP32: 21 images, the most under 1 MiB.
    let floats = vec![0u8; 21 * model::IMAGE_FLOATS * 4];
    let tensor = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [21, 3, 64, 64],
        "parameters": {"binary_data_size": floats.len()}}]});
    // Binary BYTES: 64 one-pixel PNGs.
    let png = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(1, 1)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let pngs = length_prefixed(std::iter::repeat_n(png.as_slice(), 64));
    let images = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [64],
        "parameters": {"binary_data_size": pngs.len()}}]});

    let base = format!("http://{}", server.addr);
    let statuses = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..300)
            .map(|i| {
                let (base, zeros, floats, tensor, pngs, images) =
                    (&base, &zeros, &floats, &tensor, &pngs, &images);
                scope.spawn(move || match i % 3 {
                    0 => {
                        send(
                            base,
                            INFER,
                            &[("Content-Type", "application/json".into())],
                            zeros,
                        )
                        .status
                    }
                    1 => post_binary(base, INFER, tensor, floats).status,
                    _ => post_binary(base, INFER, images, pngs).status,
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<u16>>()
    });
    let mut by_status = std::collections::BTreeMap::new();
    for status in &statuses {
        *by_status.entry(*status).or_insert(0) += 1;
    }
    eprintln!("answers by status: {by_status:?}");
    assert!(
        statuses.iter().all(|s| [200, 400, 503].contains(s)),
        "{by_status:?}"
    );
    assert!(statuses.contains(&200), "{by_status:?}");
    common::check_peak(&server, "hostile /v2 requests");
}

/// A second input is refused where it starts, unread: what follows it cannot change the answer
/// (before, it was parsed in full, into a buffer of its own, and its own errors came back).
#[test]
fn a_second_input_is_refused_unread() {
    let s = start(ServerConfig::default());
    let image = testdata::images("test", 1).remove(0).bytes;
    let mut request = images_request(&[&image]);
    let first = request["inputs"][0].clone();
    for second in [first, json!({"name": 1}), json!("x".repeat(100_000))] {
        request["inputs"] = json!([request["inputs"][0].clone(), second]);
        let r = post_json(&s, INFER, &request);
        assert_eq!(r.status, 400);
        assert!(
            r.error().contains("exactly one input"),
            "{:.200}",
            r.error()
        );
    }
}

/// A request of encoded images reserves no room for floats it will never hold. Here a tensor
/// request holds three quarters of a 64 KiB decode budget while its batch waits for a second
/// image; an image request whose JSON is long (200 KiB of whitespace) then comes. Before, it
/// first reserved room for the most floats its JSON could hold (all 64 KiB) and waited for the
/// tensor request to give up; now it reserves nothing, joins the batch, and both are answered.
#[test]
fn an_image_request_reserves_no_float_buffer() {
    let default = ServerConfig::default();
    let s = start(ServerConfig {
        decode_memory: 64 << 10,
        request_timeout: std::time::Duration::from_secs(5),
        batch: BatchPolicy {
            max_batch: 2,
            max_wait: std::time::Duration::from_secs(10),
            ..default.batch
        },
        ..default
    });
    let image = testdata::images("test", 1).remove(0).bytes;
    let pixels = Preprocessor::default().preprocess(&image).unwrap();
    let tensor = tensor_request(&pixels);
    let mut images = images_request(&[&image]).to_string().into_bytes();
    images.extend(std::iter::repeat_n(b' ', 200 << 10));
    let (tensor_status, images_status) = std::thread::scope(|scope| {
        let first = scope.spawn(|| post_json(&s, INFER, &tensor).status);
        // The tensor request is in its batch, waiting for a second image.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let second = send(
            &s.base,
            INFER,
            &[("Content-Type", "application/json".into())],
            &images,
        );
        (first.join().unwrap(), second.status)
    });
    assert_eq!(images_status, 200);
    assert_eq!(tensor_status, 200);
}
