//! Explanations end to end: the server binary with its built-in record, real CIFAR-10 JPEGs,
//! `POST /explain` (JSON and PNG) and the `/v2` explain form agreeing with the model crate's
//! own explanations of the same images, and every bad input refused with its problem.

use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use model::explain::{self, Explainer, Method};
use model::{Backend, Inference, Preprocessor, testdata};
use serde_json::{Value, json};

/// A POST answered with its body as bytes.
struct Answer {
    status: u16,
    content_type: String,
    model_version: Option<String>,
    body: Vec<u8>,
}

fn post(server: &Process, path: &str, content_type: &str, body: &[u8]) -> Answer {
    let mut res = agent()
        .post(format!("http://{}{path}", server.addr))
        .header("Content-Type", content_type)
        .send(body)
        .expect("request");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let model_version = header("model-version");
    Answer {
        status: res.status().as_u16(),
        content_type,
        model_version,
        body: res.body_mut().read_to_vec().unwrap(),
    }
}

fn explain_form(server: &Process, file: &[u8], values: &[(&str, &str)]) -> Answer {
    let body = model::multipart::form(&[("file", "image.jpg", file)], values);
    post(server, "/explain", &model::multipart::content_type(), &body)
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_slice(&a.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&a.body)))
}

/// The model crate's explanation of `bytes`, by the shipped record, for the class it predicts.
struct Local {
    explainer: Explainer,
    inference: Inference,
}

impl Local {
    fn new() -> Self {
        let backend = Backend::default_inference();
        let (net, _) = model::record::load_shipped(&backend.device()).unwrap();
        Local {
            explainer: Explainer::new(&net).unwrap(),
            inference: Inference::new(net, backend).unwrap(),
        }
    }

    fn explain(&self, bytes: &[u8], method: Method, target: Option<usize>) -> (usize, Vec<f32>) {
        let x = Preprocessor::default().preprocess(bytes).unwrap();
        let probs = self.inference.probabilities(&x);
        let t = explain::target(target, &probs);
        (
            t,
            self.explainer
                .explain(method, &x, t, explain::DEFAULT_STEPS),
        )
    }
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn explanations_over_http_are_the_model_crates() {
    let server = Process::start(&[]);
    let local = Local::new();
    let images = testdata::images("test", 1);
    for (i, img) in images.iter().enumerate().take(4) {
        for method in Method::ALL {
            let answer = explain_form(&server, &img.bytes, &[("method", method.name())]);
            assert_eq!(
                answer.status,
                200,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
            assert_eq!(answer.content_type, "application/json");
            assert!(answer.model_version.is_some());
            let v = json_of(&answer);
            let (target, map) = local.explain(&img.bytes, method, None);
            assert_eq!(v["method"], method.name());
            assert_eq!(v["target"]["class_index"], target, "{}", img.path);
            assert_eq!(v["prediction"]["class_index"], target);
            assert_eq!(v["top_3_predictions"].as_array().unwrap().len(), 3);
            assert_eq!(
                (v["width"].as_u64(), v["height"].as_u64()),
                (Some(64), Some(64))
            );
            let heatmap: Vec<f32> = serde_json::from_value(v["heatmap"].clone()).unwrap();
            // Rounded to 1/1000 on the wire; occlusion's probabilities come from the fast
            // path on the server and from Burn here.
            let diff = largest_difference(&heatmap, &explain::heat(&map));
            assert!(
                diff <= 2e-3,
                "{method} on {}: heatmaps differ by {diff}",
                img.path
            );
            assert!(heatmap.contains(&1.0), "{method}: scaled to 1");
        }
        if i == 0 {
            // Another class than the predicted one, by name.
            let answer = explain_form(&server, &img.bytes, &[("target", "truck")]);
            let v = json_of(&answer);
            assert_eq!(v["target"]["class"], "truck");
            let (_, map) = local.explain(&img.bytes, Method::GradCam, Some(9));
            let heatmap: Vec<f32> = serde_json::from_value(v["heatmap"].clone()).unwrap();
            assert!(largest_difference(&heatmap, &explain::heat(&map)) <= 2e-3);
            // The uploaded image's own size (CIFAR's 32×32).
            let v = json_of(&explain_form(&server, &img.bytes, &[("size", "original")]));
            assert_eq!(
                (v["width"].as_u64(), v["height"].as_u64()),
                (Some(32), Some(32))
            );
            assert_eq!(v["heatmap"].as_array().unwrap().len(), 32 * 32);
            // The PNG: the heatmap over the image, 256×256.
            let png = explain_form(
                &server,
                &img.bytes,
                &[("format", "png"), ("method", "occlusion")],
            );
            assert_eq!(png.status, 200);
            assert_eq!(png.content_type, "image/png");
            let drawn = image::load_from_memory(&png.body).unwrap().to_rgb8();
            assert_eq!(drawn.dimensions(), (256, 256));
        }
    }
}

#[test]
fn the_v2_explain_form_answers_attributions() {
    let server = Process::start(&[]);
    let local = Local::new();
    let images = testdata::images("test", 1);
    let pair = [&images[0], &images[5]];
    let request = json!({
        "id": "why",
        "parameters": {"method": "integrated-gradients", "steps": 32},
        "inputs": [{
            "name": "image", "datatype": "BYTES", "shape": [2],
            "data": pair.iter().map(|i| BASE64.encode(&i.bytes)).collect::<Vec<_>>(),
        }],
    });
    let path = "/v2/models/cifar10-cnn/explain";
    let answer = post(
        &server,
        path,
        "application/json",
        request.to_string().as_bytes(),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = json_of(&answer);
    assert_eq!(v["id"], "why");
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["name"], "attributions");
    assert_eq!(outputs[0]["datatype"], "FP32");
    assert_eq!(outputs[0]["shape"], json!([2, 64, 64]));
    assert_eq!(outputs[1]["name"], "target");
    assert_eq!(outputs[1]["shape"], json!([2]));
    let data: Vec<f32> = serde_json::from_value(outputs[0]["data"].clone()).unwrap();
    for (k, img) in pair.iter().enumerate() {
        let (target, map) = local.explain(&img.bytes, Method::IntegratedGradients, None);
        let got = &data[k * 4096..(k + 1) * 4096];
        let scale = map.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = largest_difference(got, &map);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{}: attributions differ by {diff}",
            img.path
        );
        let label = outputs[1]["data"][k].as_str().unwrap();
        assert!(
            label.ends_with(&format!(":{target}:{}", model::CLASSES[target])),
            "{label}"
        );
    }

    // An FP32 tensor (the `input` input, its floats reserved on the decode budget beside the
    // copies'), by occlusion: the maps of the same images.
    let floats: Vec<f32> = pair
        .iter()
        .flat_map(|i| Preprocessor::default().preprocess(&i.bytes).unwrap())
        .collect();
    let request = json!({
        "parameters": {"method": "occlusion"},
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 64, 64], "data": floats}],
        "outputs": [{"name": "attributions"}],
    });
    let answer = post(
        &server,
        path,
        "application/json",
        request.to_string().as_bytes(),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = json_of(&answer);
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    let data: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    for (k, img) in pair.iter().enumerate() {
        let (_, map) = local.explain(&img.bytes, Method::Occlusion, None);
        let diff = largest_difference(&data[k * 4096..(k + 1) * 4096], &map);
        assert!(
            diff <= 1e-3,
            "{}: occlusion maps differ by {diff}",
            img.path
        );
    }

    // Binary outputs, by occlusion, for one image and a named class.
    let request = json!({
        "parameters": {"method": "occlusion", "target": 3, "binary_data_output": true},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "data": [BASE64.encode(&images[3].bytes)]}],
    });
    let answer = post(
        &server,
        path,
        "application/json",
        request.to_string().as_bytes(),
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.content_type, "application/octet-stream");
    let mut stream = serde_json::Deserializer::from_slice(&answer.body).into_iter::<Value>();
    let v = stream.next().unwrap().unwrap();
    let json_end = stream.byte_offset();
    let outputs = v["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 4096 * 4);
    let floats: Vec<f32> = answer.body[json_end..json_end + 4096 * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let (_, map) = local.explain(&images[3].bytes, Method::Occlusion, Some(3));
    assert!(largest_difference(&floats, &map) <= 1e-3);
    // The target: one length-prefixed text, the class asked for.
    let text = &answer.body[json_end + 4096 * 4 + 4..];
    assert!(String::from_utf8_lossy(text).ends_with(":3:cat"));
}

#[test]
fn bad_explanation_requests_get_clear_problems() {
    let server = Process::start(&["--explain-max-steps", "64"]);
    let jpeg = &testdata::images("test", 1)[0].bytes;
    let problem = |a: &Answer, status: u16, kind: &str| {
        assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.content_type, "application/problem+json");
        let v = json_of(a);
        assert_eq!(v["type"], format!("/problems/{kind}"));
        v["detail"].as_str().unwrap().to_string()
    };
    let detail = problem(
        &explain_form(&server, jpeg, &[("method", "lime")]),
        400,
        "invalid-option",
    );
    assert!(
        detail.contains("lime") && detail.contains("gradcam"),
        "{detail}"
    );
    problem(
        &explain_form(&server, jpeg, &[("target", "10")]),
        400,
        "invalid-option",
    );
    problem(
        &explain_form(&server, jpeg, &[("target", "unicorn")]),
        400,
        "invalid-option",
    );
    problem(
        &explain_form(&server, jpeg, &[("format", "gif")]),
        400,
        "invalid-option",
    );
    problem(
        &explain_form(&server, jpeg, &[("size", "huge")]),
        400,
        "invalid-option",
    );
    let steps = problem(
        &explain_form(&server, jpeg, &[("method", "ig"), ("steps", "65")]),
        400,
        "invalid-option",
    );
    assert!(steps.contains("64"), "{steps}");
    problem(
        &explain_form(&server, jpeg, &[("steps", "0")]),
        400,
        "invalid-option",
    );
    problem(
        &explain_form(&server, jpeg, &[("method", &"x".repeat(65))]),
        400,
        "bad-request",
    );
    problem(
        &explain_form(
            &server,
            jpeg,
            &[("method", "occlusion"), ("method", "gradcam")],
        ),
        400,
        "bad-request",
    );
    problem(
        &explain_form(&server, b"not an image", &[]),
        422,
        "invalid-image",
    );
    // Cut inside its headers: nothing to decode.
    problem(
        &explain_form(&server, &jpeg[..100], &[("method", "occlusion")]),
        422,
        "invalid-image",
    );
    problem(&explain_form(&server, b"", &[]), 400, "empty-file");
    let wrong_field = model::multipart::form(&[("image", "a.jpg", jpeg)], &[]);
    problem(
        &post(
            &server,
            "/explain",
            &model::multipart::content_type(),
            &wrong_field,
        ),
        400,
        "unexpected-field",
    );
    let no_file = model::multipart::form(&[], &[("method", "gradcam")]);
    problem(
        &post(
            &server,
            "/explain",
            &model::multipart::content_type(),
            &no_file,
        ),
        400,
        "missing-field",
    );
    problem(
        &post(&server, "/explain", "text/plain", b"hello"),
        415,
        "unsupported-media-type",
    );

    // The /v2 form refuses in the protocol's form.
    let path = "/v2/models/cifar10-cnn/explain";
    let v2 = |params: Value, n: usize| {
        let request = json!({
            "parameters": params,
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [n],
                        "data": vec![BASE64.encode(jpeg); n]}],
        });
        post(
            &server,
            path,
            "application/json",
            request.to_string().as_bytes(),
        )
    };
    let error = |a: &Answer| {
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
        json_of(a)["error"].as_str().unwrap().to_string()
    };
    assert!(error(&v2(json!({"method": "lime"}), 1)).contains("lime"));
    assert!(error(&v2(json!({"target": "dragon"}), 1)).contains("dragon"));
    assert!(error(&v2(json!({"method": "ig", "steps": 1000}), 1)).contains("steps"));
    assert!(error(&v2(json!({"method": "x".repeat(100)}), 1)).contains("100 bytes"));
    assert!(error(&v2(json!({"method": "occlusion"}), 9)).contains("at most"));
    // The server is still up and answering.
    assert_eq!(explain_form(&server, jpeg, &[]).status, 200);
}

/// An explanation past its deadline stops its work and gives its place back: with one place
/// (`--max-explanations 1`), integrated gradients of 200,000 steps (about a minute of work)
/// time out at the 1 s deadline with 503, and a Grad-CAM right after gets the place within a
/// second or two, not after the minute.
#[test]
fn an_explanation_past_its_deadline_gives_its_place_back() {
    let server = Process::start(&[
        "--max-explanations",
        "1",
        "--request-timeout",
        "1",
        "--explain-max-steps",
        "200000",
    ]);
    let jpeg = &testdata::images("test", 1)[0].bytes;
    let long = explain_form(
        &server,
        jpeg,
        &[("method", "integrated-gradients"), ("steps", "200000")],
    );
    assert_eq!(long.status, 503, "{}", String::from_utf8_lossy(&long.body));
    assert_eq!(json_of(&long)["type"], "/problems/timeout");
    let started = std::time::Instant::now();
    let mut refused = 0;
    loop {
        let next = explain_form(&server, jpeg, &[("method", "gradcam")]);
        if next.status == 200 {
            break;
        }
        assert_eq!(next.status, 503, "{}", String::from_utf8_lossy(&next.body));
        refused += 1;
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the place was not given back ({refused} refusals)"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "place given back after {:?} ({refused} refusals)",
        started.elapsed()
    );
}
