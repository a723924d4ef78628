//! Real, short training runs of the `train` binary on real CIFAR-10 images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use model::dataset::{Sample, to_binary};
use model::{Backend, Preprocessor, testdata};
use tempfile::TempDir;
use train::metrics_log::read_metrics;

/// 20 training and 5 test images per class, as image folders under `cifar10/` in a fresh
/// temporary folder (removed when the returned guard drops).
pub(crate) fn small_folders() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut images = testdata::images("train", 20);
    images.extend(testdata::images("test", 5));
    testdata::write_folders(&dir.path().join("cifar10"), &images);
    dir
}

pub(crate) fn train(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.args([
        "--plain",
        "--batch-size",
        "25",
        "--valid-fraction",
        "0.1",
        "--warmup-epochs",
        "0",
    ])
    .args(args);
    cmd
}

pub(crate) fn ok(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "train failed:\n{text}");
    text
}

/// Starts `train ARGS` writing to `run`, kills it (SIGKILL) once a checkpoint is complete, and
/// returns that checkpoint's epoch.
pub(crate) fn kill_after_a_checkpoint(args: &[&str], run: &Path) -> usize {
    let mut child = train(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = run.join("checkpoint");
    let deadline = Instant::now() + Duration::from_secs(300);
    while train::checkpoint::latest_complete(&ckpt).is_none() {
        assert!(Instant::now() < deadline, "no checkpoint written");
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    train::checkpoint::latest_complete(&ckpt).unwrap()
}

/// `train --plain --data DATA --resume RUN`: the run continues with its own recipe.
pub(crate) fn resume(data: &Path, run: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train"));
    cmd.args(["--plain", "--data", data.to_str().unwrap()])
        .args(["--resume", run.to_str().unwrap()]);
    cmd
}

fn assert_complete_run(run: &Path, epochs: usize) {
    for f in [
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "test.json",
        "curves.png",
        "confusion.png",
        "per_class.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing in {}", run.display());
    }
    let metrics = read_metrics(&run.join("metrics.jsonl")).unwrap();
    let numbers: Vec<usize> = metrics.iter().map(|m| m.epoch).collect();
    assert_eq!(numbers, (1..=epochs).collect::<Vec<_>>());
    for m in &metrics {
        assert!(
            m.train_loss.is_finite() && m.valid_loss.is_finite(),
            "{m:?}"
        );
        assert!((0.0..=100.0).contains(&m.valid_accuracy), "{m:?}");
        assert!(m.train_images_per_sec > 0.0);
    }
    let (_, meta) =
        model::load_model(&run.join("model.safetensors"), &Backend::default().device()).unwrap();
    let test: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("test.json")).unwrap()).unwrap();
    assert_eq!(test["evaluation"]["images"], 50);
    assert_eq!(meta.test_accuracy, test["evaluation"]["accuracy"].as_f64());
    assert_eq!(meta.epochs, Some(epochs));
    // Calibrated for int8 on training images, with int8's own test accuracy.
    let int8 = meta
        .int8
        .expect("a trained record carries its int8 calibration");
    assert!(
        int8.conv1 > 0.0 && int8.conv2 > 0.0 && int8.images > 0,
        "{int8:?}"
    );
    assert!(
        int8.test_accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)),
        "{int8:?}"
    );
}

#[test]
fn short_run_writes_a_complete_run_folder_and_learns() {
    let tmp = small_folders();
    let data = tmp.path();
    let run = data.join("run");
    let log = ok(&train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "4",
        "--lr",
        "0.003",
    ])
    .output()
    .unwrap());
    assert!(log.contains("test accuracy"), "{log}");
    assert_complete_run(&run, 4);
    let metrics = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics[3].train_loss < metrics[0].train_loss,
        "training loss did not fall: {metrics:?}"
    );
}

#[test]
fn kill_nine_then_resume_continues_from_the_last_checkpoint() {
    let tmp = small_folders();
    let data = tmp.path();
    let run = data.join("run");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "4",
    ];
    let done = kill_after_a_checkpoint(&args, &run);
    let ckpt = run.join("checkpoint");
    // What a kill in the middle of Burn's write strands: its scratch file, never a partial record.
    let scratch = ckpt.join(format!("optim-{}.bpk.1-0.tmp", done + 1));
    std::fs::write(&scratch, b"partial").unwrap();

    let log = ok(&resume(data, &run).output().unwrap());
    assert!(
        log.contains(&format!("resuming after epoch {done}")),
        "{log}"
    );
    assert!(log.contains("partly written checkpoint file"), "{log}");
    assert!(!scratch.exists());
    assert_complete_run(&run, 4);
}

#[test]
fn a_fresh_run_into_an_old_run_folder_resumes_only_from_its_own_checkpoints() {
    let tmp = small_folders();
    let data = tmp.path();
    let run = data.join("run");
    let fresh = |epochs: &str| {
        ok(&train(&[
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--epochs",
            epochs,
            "--no-test",
        ])
        .output()
        .unwrap())
    };
    fresh("2");
    let ckpt = run.join("checkpoint");
    assert_eq!(train::checkpoint::latest_complete(&ckpt), Some(2));

    let log = fresh("1");
    assert!(
        log.contains("removed an earlier run's checkpoints and results"),
        "{log}"
    );
    assert_eq!(train::checkpoint::latest_complete(&ckpt), Some(1));
    let log = ok(&resume(data, &run).output().unwrap());
    assert!(log.contains("resuming after epoch 1"), "{log}");
    let epochs: Vec<usize> = read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.epoch)
        .collect();
    assert_eq!(epochs, [1]);
}

#[test]
fn official_binary_layout_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bin = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let p = Preprocessor::default();
    let to_samples = |split: &str, n: usize| -> Vec<Sample> {
        testdata::images(split, n)
            .iter()
            .map(|i| Sample {
                image: p.decode(&i.bytes).unwrap(),
                label: model::CLASSES.iter().position(|c| *c == i.class).unwrap() as u8,
            })
            .collect()
    };
    let train_samples = to_samples("train", 10);
    for (k, chunk) in train_samples.chunks(20).enumerate() {
        std::fs::write(
            bin.join(format!("data_batch_{}.bin", k + 1)),
            to_binary(chunk),
        )
        .unwrap();
    }
    std::fs::write(
        bin.join("test_batch.bin"),
        to_binary(&to_samples("test", 5)),
    )
    .unwrap();
    let run = dir.join("run");
    let log = ok(&train(&[
        "--data",
        dir.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
    ])
    .output()
    .unwrap());
    assert!(log.contains("Binary"), "{log}");
    assert_complete_run(&run, 1);
}

#[test]
fn missing_and_corrupt_data_give_clear_errors() {
    let nodata = tempfile::tempdir().unwrap();
    let empty = nodata.path();
    let run = empty.join("run");
    let out = train(&[
        "--data",
        empty.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        !run.exists(),
        "a run that cannot find its data leaves no folder behind"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no CIFAR-10 data found") && err.contains("data_batch_1.bin"),
        "{err}"
    );

    let tmp = small_folders();
    let data = tmp.path();
    let bad = data.join("cifar10/train/dog/zz-broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff garbage").unwrap();
    let run = data.join("run");
    let out = train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zz-broken.jpg"), "{err}");

    let log = ok(&train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--on-corrupt",
        "skip",
    ])
    .output()
    .unwrap());
    assert!(log.contains("(1 train, 0 test skipped)"), "{log}");
}

/// `--seed` makes a run reproducible on the same backend: same losses, same weights.
#[test]
fn same_seed_same_run() {
    let tmp = small_folders();
    let data = tmp.path();
    let runs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let run = data.join(format!("run{i}"));
            ok(&train(&[
                "--data",
                data.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
                "--epochs",
                "2",
                "--seed",
                "7",
            ])
            .output()
            .unwrap());
            run
        })
        .collect();
    let losses = |run: &Path| -> Vec<(f64, f64)> {
        read_metrics(&run.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|m| (m.train_loss, m.valid_loss))
            .collect()
    };
    assert_eq!(losses(&runs[0]), losses(&runs[1]));
    let weights = |run: &Path| -> Vec<u8> {
        let bytes = std::fs::read(run.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort_unstable();
        names
            .iter()
            .flat_map(|n| st.tensor(n).unwrap().data().to_vec())
            .collect()
    };
    assert_eq!(weights(&runs[0]), weights(&runs[1]));
}

/// A metrics log that cannot be written fails the run before any training, naming the file;
/// a damaged line in one is reported by `train plot`, not skipped.
#[test]
fn metrics_log_errors_fail_loudly() {
    let tmp = small_folders();
    let data = tmp.path();
    let run = data.join("run");
    // A folder where the log should be: it cannot be opened for appending.
    std::fs::create_dir_all(run.join("metrics.jsonl")).unwrap();
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "1",
    ];
    let out = train(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot open the metrics log") && err.contains("metrics.jsonl"),
        "{err}"
    );
    assert!(!run.join("model.safetensors").exists());

    std::fs::remove_dir(run.join("metrics.jsonl")).unwrap();
    ok(&train(&args).output().unwrap());
    let log = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"epoch\": 2, \"train_lo\n");
    std::fs::write(&log, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["plot", run.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("metrics.jsonl line 2"), "{err}");
}
