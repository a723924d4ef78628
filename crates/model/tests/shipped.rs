//! The shipped record still scores what `assets/model.json` says on the real CIFAR-10 test
//! set: a change to preprocessing or loading that shifts accuracy is caught here.

use model::dataset::Sample;
use model::eval::compare;
use model::{Backend, CLASSES, Inference, Precision, Preprocessor, testdata};

#[test]
fn shipped_record_meets_its_recorded_accuracy() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/model.json");
    let text =
        std::fs::read_to_string(path).expect("assets/model.json describes the shipped record");
    let manifest: serde_json::Value =
        serde_json::from_str(&text).expect("assets/model.json is valid JSON");
    let recorded = manifest["test_accuracy"]
        .as_f64()
        .expect("test_accuracy in assets/model.json");

    // The engine that serves predictions by default is the one held to the recorded figure.
    let backend = Backend::default_inference();
    let device = backend.device();
    let (net, meta) = model::record::load_shipped(&device).expect("the shipped record loads");
    assert_eq!(
        meta.test_accuracy,
        Some(recorded),
        "record metadata and model.json agree"
    );

    let pre = Preprocessor::default();
    let samples: Vec<Sample> = testdata::images("test", usize::MAX)
        .iter()
        .map(|img| Sample {
            image: pre.decode(&img.bytes).expect("test image decodes"),
            label: CLASSES
                .iter()
                .position(|c| *c == img.class)
                .expect("known class") as u8,
        })
        .collect();
    assert_eq!(samples.len(), 10_000);
    let inference = Inference::new(net.clone(), backend).expect("the fast path takes the record");
    // The int8 path, from the calibration the record carries, beside FP32 in one pass.
    let int8 = &manifest["int8"];
    let calibration = meta
        .int8
        .expect("the shipped record is calibrated for int8");
    assert_eq!(calibration.test_accuracy, int8["test_accuracy"].as_f64());
    let quantized = Inference::new(net, Backend::Fast)
        .and_then(|i| i.with_precision(Precision::Int8, Some(&calibration)))
        .expect("the int8 path takes the record");
    assert_eq!(quantized.precision(), Precision::Int8);
    let (e, q, agreement) = compare(&inference, &quantized, &samples, 500);
    assert!(
        (e.accuracy - recorded).abs() <= 0.005,
        "measured {:.4}, recorded {recorded:.4}",
        e.accuracy
    );

    // int8 scores what model.json says it does and agrees with FP32 as often.
    let recorded_int8 = int8["test_accuracy"].as_f64().expect("int8 test_accuracy");
    assert!(
        (q.accuracy - recorded_int8).abs() <= 0.005,
        "int8 measured {:.4}, recorded {recorded_int8:.4}",
        q.accuracy
    );
    let recorded_agreement = int8["top1_agreement_with_fp32"]
        .as_f64()
        .expect("agreement");
    assert!(
        agreement >= recorded_agreement - 0.005,
        "int8 agrees with FP32 on {agreement:.4}, recorded {recorded_agreement:.4}"
    );
}
