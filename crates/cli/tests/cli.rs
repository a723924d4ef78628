//! The `cnn` binary on real CIFAR-10 images, broken files and both data layouts.

use std::path::PathBuf;
use std::process::{Command, Output};

use model::dataset::{Sample, to_binary};
use model::{Backend, Inference, Preprocessor, RecordMeta, load_model, save_model, testdata};

/// A record made here, so results do not depend on the shipped weights.
fn record(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("test.safetensors");
    let device = Backend::default().device();
    save_model(&model::Cnn::init(&device), &path, &RecordMeta::default()).unwrap();
    path
}

fn cnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnn"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn classify_a_directory_with_a_broken_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("nested")).unwrap();
    for (i, img) in testdata::images("test", 1).iter().enumerate() {
        let sub = if i % 2 == 0 {
            images.clone()
        } else {
            images.join("nested")
        };
        std::fs::write(sub.join(format!("{}.jpg", img.class)), &img.bytes).unwrap();
    }
    std::fs::write(images.join("broken.jpg"), b"\xff\xd8\xff not a jpeg").unwrap();
    let model = record(dir);
    let m = model.to_str().unwrap();
    let d = images.to_str().unwrap();

    let table = cnn(&["--model", m, "classify", d]);
    assert_eq!(
        table.status.code(),
        Some(1),
        "a failed file makes the exit code 1"
    );
    let text = stdout(&table);
    assert!(text.contains("11 files, 10 classified, 1 failed"), "{text}");
    assert!(text.contains("broken.jpg\terror:"), "{text}");

    let json = cnn(&["--model", m, "classify", d, "--json", "--top-k", "5"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["total"], 11);
    assert_eq!(v["failed"], 1);
    let ok: Vec<_> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["prediction"].is_object())
        .collect();
    assert_eq!(ok.len(), 10);
    assert!(ok.iter().all(|r| r["top_k"].as_array().unwrap().len() == 5));

    let jsonl = cnn(&["--model", m, "classify", d, "--jsonl"]);
    let lines: Vec<serde_json::Value> = stdout(&jsonl)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11);

    // Only good files: exit 0, and the same answer as a batch of one.
    let cat = images.join("nested/cat.jpg");
    let single = cnn(&["--model", m, "classify", cat.to_str().unwrap(), "--json"]);
    assert!(single.status.success());
    let one: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
    let in_batch = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with("/cat.jpg"))
        .unwrap();
    assert_eq!(
        one["results"][0]["prediction"]["class"],
        in_batch["prediction"]["class"]
    );
}

#[test]
fn eval_on_both_layouts_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = testdata::images("test", 3);
    testdata::write_folders(&dir.join("folders"), &images);
    std::fs::create_dir_all(dir.join("folders/train")).unwrap();
    let p = Preprocessor::default();
    let samples: Vec<Sample> = images
        .iter()
        .map(|i| Sample {
            image: p.decode(&i.bytes).unwrap(),
            label: model::CLASSES.iter().position(|c| *c == i.class).unwrap() as u8,
        })
        .collect();
    let bin = dir.join("binary/cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("test_batch.bin"), to_binary(&samples)).unwrap();
    let model = record(dir);

    let mut results = Vec::new();
    // Both data-set layouts, and a folder of class folders as people have it (cifar10/test),
    // evaluated as is.
    for layout in ["folders", "binary", "folders/test"] {
        let out = cnn(&[
            "--model",
            model.to_str().unwrap(),
            "eval",
            "--data",
            dir.join(layout).to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["evaluation"]["images"], 30);
        results.push(v["evaluation"].clone());
    }
    // The same pixels in every layout give the same confusion matrix.
    assert_eq!(results[0]["confusion"], results[1]["confusion"]);
    assert_eq!(results[0]["confusion"], results[2]["confusion"]);

    let table = cnn(&[
        "--model",
        model.to_str().unwrap(),
        "eval",
        "--data",
        dir.join("folders").to_str().unwrap(),
    ]);
    let text = stdout(&table);
    assert!(
        text.contains("top-1 accuracy") && text.contains("confusion matrix"),
        "{text}"
    );
}

/// `--tta` on classify and eval: the answers are the in-process model's with the same test-time
/// augmentation (`--tta` alone, before the files, is the mirror; `--tta=crops` the ten views),
/// and eval says which was on.
#[test]
fn tta_on_classify_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = testdata::images("test", 1);
    testdata::write_folders(&dir.join("data"), &images);
    let files: Vec<PathBuf> = images
        .iter()
        .take(3)
        .map(|img| {
            let p = dir.join(format!("{}.jpg", img.class));
            std::fs::write(&p, &img.bytes).unwrap();
            p
        })
        .collect();
    let model = record(dir);
    let m = model.to_str().unwrap();
    let backend = Backend::default_inference();
    let pre = Preprocessor::default();
    for (flag, kind) in [
        ("--tta", model::Tta::Flip),
        ("--tta=crops", model::Tta::Crops),
    ] {
        let mut args = vec!["--model", m, "classify", "--json", flag];
        args.extend(files.iter().map(|p| p.to_str().unwrap()));
        let out = cnn(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["results"].as_array().unwrap().len(), 3, "{flag}: {v}");
        let (net, _) = load_model(&model, &backend.device()).unwrap();
        let local = Inference::new(net, backend).unwrap().with_tta(kind);
        for (r, img) in v["results"].as_array().unwrap().iter().zip(&images) {
            let want = &local.predict(&pre.preprocess(&img.bytes).unwrap(), 3)[0];
            assert_eq!(r["prediction"]["class_index"], want.best.class_index);
            let got = r["prediction"]["confidence"].as_f64().unwrap();
            assert!(
                (got - f64::from(want.best.confidence)).abs() < 1e-5,
                "{flag}: {r}"
            );
        }
    }

    let data = dir.join("data/test");
    let eval = |tta: Option<&str>| {
        let mut args = vec![
            "--model",
            m,
            "eval",
            "--data",
            data.to_str().unwrap(),
            "--json",
        ];
        args.extend(tta);
        let out = cnn(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let split = model::dataset::labelled_set(&data, model::dataset::OnCorrupt::Fail).unwrap();
    for (flag, tta, kind) in [
        (None, "off", model::Tta::Off),
        (Some("--tta"), "flip", model::Tta::Flip),
        (Some("--tta=flip"), "flip", model::Tta::Flip),
        (Some("--tta=crops"), "crops", model::Tta::Crops),
    ] {
        let got = eval(flag);
        assert_eq!(got["tta"], tta, "{flag:?}");
        assert_eq!(got["evaluation"]["images"], 10);
        // The same accuracy as the in-process model with that augmentation.
        let (net, _) = load_model(&model, &backend.device()).unwrap();
        let local = Inference::new(net, backend).unwrap().with_tta(kind);
        let want = model::eval::evaluate(&local, &split.samples, 64, |_| {});
        assert_eq!(got["evaluation"]["accuracy"], want.accuracy, "{flag:?}");
    }
    let table = cnn(&[
        "--model",
        m,
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--tta",
    ]);
    assert!(
        stdout(&table).contains("test-time augmentation"),
        "{}",
        stdout(&table)
    );
}

#[test]
fn info_completions_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = record(dir);
    let info = cnn(&["--model", model.to_str().unwrap(), "info"]);
    assert!(info.status.success());
    assert!(stdout(&info).contains("825398"), "{}", stdout(&info));
    let bash = cnn(&["completions", "bash"]);
    assert!(bash.status.success() && stdout(&bash).contains("complete"));

    let missing = cnn(&["--model", "/nonexistent/model.safetensors", "info"]);
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/nonexistent/model.safetensors"), "{err}");

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not weights").unwrap();
    let bad = cnn(&[
        "--model",
        garbage.to_str().unwrap(),
        "classify",
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid record"));
}

/// A reader that goes away (`cnn eval ... | head`) ends a command quietly with status 0, as
/// ripgrep does: no panic, no "Broken pipe" error.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images = testdata::images("test", 1);
    testdata::write_folders(&dir.join("data"), &images);
    std::fs::write(dir.join("a.jpg"), &images[0].bytes).unwrap();
    let model = record(dir);
    let data = dir.join("data/test");
    let image = dir.join("a.jpg");
    let commands: [&[&str]; 5] = [
        &["info"],
        &["eval", "--data", data.to_str().unwrap()],
        &["eval", "--data", data.to_str().unwrap(), "--json"],
        &["classify", image.to_str().unwrap()],
        &["completions", "bash"],
    ];
    for args in commands {
        // The read end is closed before the command starts: its first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_cnn"))
            .args(["--model", model.to_str().unwrap()])
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// `cnn calibrate` writes a record that carries int8's ranges and accuracy; `--precision int8`
/// then runs classify and eval on it, and is refused, with the reason, where it cannot run.
#[test]
fn calibrate_then_int8_on_classify_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut images = testdata::images("train", 2);
    images.extend(testdata::images("test", 1));
    testdata::write_folders(&dir.join("data"), &images);
    let file = dir.join("a.jpg");
    std::fs::write(&file, &images[0].bytes).unwrap();
    let (model, calibrated) = (record(dir), dir.join("int8.safetensors"));
    let (m, c, f) = (
        model.to_str().unwrap(),
        calibrated.to_str().unwrap(),
        file.to_str().unwrap(),
    );
    let data = dir.join("data");

    let refused = cnn(&["--model", m, "--precision", "int8", "classify", f]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("no int8 calibration"),
        "{err}"
    );

    let out = cnn(&[
        "--model",
        m,
        "calibrate",
        "--data",
        data.to_str().unwrap(),
        "--images",
        "20",
        "--out",
        c,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["calibration"]["images"], 20);
    assert_eq!(report["test_images"], 10);
    assert!(report["calibration"]["conv1"].as_f64().unwrap() > 0.0);
    let int8 = report["int8"]["accuracy"].as_f64().unwrap();
    assert_eq!(report["calibration"]["test_accuracy"].as_f64(), Some(int8));
    let agreement = report["top1_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement));
    assert!(
        stdout(&cnn(&["--model", c, "info"])).contains("int8          calibrated on 20 images")
    );

    let eval = cnn(&[
        "--model",
        c,
        "--precision",
        "int8",
        "eval",
        "--data",
        data.join("test").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["precision"], "int8");
    assert_eq!(eval["evaluation"]["accuracy"].as_f64(), Some(int8));

    // The in-process int8 network's answer.
    let backend = Backend::default_inference();
    let (net, meta) = load_model(&calibrated, &backend.device()).unwrap();
    let local = Inference::new(net, backend)
        .and_then(|i| i.with_precision(model::Precision::Int8, meta.int8.as_ref()))
        .unwrap();
    let pre = Preprocessor::default();
    let want = local
        .predict(&pre.preprocess(&images[0].bytes).unwrap(), 3)
        .remove(0);
    let out = cnn(&["--model", c, "--precision", "int8", "classify", "--json", f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = &v["results"][0]["prediction"];
    assert_eq!(got["class_index"], want.best.class_index);
    let confidence = got["confidence"].as_f64().unwrap();
    assert!(
        (confidence - f64::from(want.best.confidence)).abs() < 1e-5,
        "{v}"
    );

    if Backend::available().contains(&Backend::Flex) {
        let other = cnn(&[
            "--model",
            c,
            "--backend",
            "flex",
            "--precision",
            "int8",
            "classify",
            f,
        ]);
        let err = String::from_utf8_lossy(&other.stderr);
        assert!(
            !other.status.success() && err.contains("fast backend only"),
            "{err}"
        );
    }
}

/// `cnn explain` on real images with the built-in record: an overlay PNG per image (the image
/// enlarged, the heatmap over it), the JSON's heatmap equal to the model crate's for the class
/// it predicts, a named target, a broken file reported and the others still explained.
#[test]
fn explain_writes_an_overlay_per_image_and_its_heatmap() {
    use model::explain::{self, Explainer, Method};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let images: Vec<_> = testdata::images("test", 1).into_iter().take(3).collect();
    let mut args = vec!["explain".to_string()];
    for img in &images {
        let path = dir.join(format!("{}.jpg", img.class));
        std::fs::write(&path, &img.bytes).unwrap();
        args.push(path.to_str().unwrap().to_string());
    }
    let broken = dir.join("broken.jpg");
    std::fs::write(&broken, &images[0].bytes[..100]).unwrap();
    args.push(broken.to_str().unwrap().to_string());
    let out = dir.join("pictures");
    args.extend(
        [
            "--method",
            "occlusion",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let run = cnn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        run.status.code(),
        Some(1),
        "one file failed: {}",
        stdout(&run)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
    assert_eq!(doc["total"], 4);
    assert_eq!(doc["failed"], 1);

    let backend = Backend::default_inference();
    let (net, _) = model::record::load_shipped(&backend.device()).unwrap();
    let explainer = Explainer::new(&net).unwrap();
    let inference = Inference::new(net, backend).unwrap();
    for (img, result) in images.iter().zip(doc["results"].as_array().unwrap()) {
        let x = Preprocessor::default().preprocess(&img.bytes).unwrap();
        let target = explain::target(None, &inference.probabilities(&x));
        assert_eq!(result["target"]["class_index"], target);
        assert_eq!(result["method"], "occlusion");
        let heat: Vec<f32> = serde_json::from_value(result["heatmap"]["values"].clone()).unwrap();
        let want = explain::heat(&explainer.explain(Method::Occlusion, &x, target, 0));
        let diff = heat
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 2e-3, "{}: heatmaps differ by {diff}", img.path);
        let written = result["written"].as_str().unwrap();
        assert!(
            written.ends_with(&format!("{}.occlusion.png", img.class)),
            "{written}"
        );
        // CIFAR's 32×32 drawn at 256×256.
        let png = image::open(written).unwrap();
        assert_eq!((png.width(), png.height()), (256, 256));
    }
    let failed = &doc["results"][3];
    assert!(failed["file"].as_str().unwrap().ends_with("broken.jpg"));
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");
    assert!(failed.get("written").is_none(), "{failed}");

    let named = cnn(&[
        "explain",
        dir.join(format!("{}.jpg", images[0].class))
            .to_str()
            .unwrap(),
        "--target",
        "frog",
        "--jsonl",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        named.status.success(),
        "{}",
        String::from_utf8_lossy(&named.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout(&named).trim()).unwrap();
    assert_eq!(line["target"]["class"], "frog");
    assert_eq!(line["method"], "gradcam");
    let unknown = cnn(&["explain", "x.jpg", "--method", "lime"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("gradcam"));
}
