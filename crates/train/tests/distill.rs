//! Distillation end to end: `train teach` writes a teacher's answers for every view of every
//! training image, `train --teacher-logits` learns from them, and a teacher file made for other
//! data, or damaged, is refused before any training; a wider teacher (`--arch teacher-s`)
//! trains, resumes and teaches; `train --teacher RECORD --mixup` learns from a teacher run on
//! every (blended) batch.

use std::path::Path;
use std::process::Command;

use burn::module::Param;
use burn::tensor::Tensor;
use model::dataset::{self, OnCorrupt, Sample};
use model::{Backend, Inference, NUM_CLASSES};
use train::batcher::View;
use train::metrics_log::read_metrics;
use train::teacher::{Answers, TeacherLogits, WideTeacher};

use crate::train::{kill_after_a_checkpoint, ok, resume, small_folders, train};

/// `train --data DATA --out RUN TEACHER...` (with `train`'s test flags): a student of the
/// teacher that `teacher` names, stored (`--teacher-logits`) or live (`--teacher`).
fn student(data: &Path, run: &Path, teacher: &[&str]) -> Command {
    let mut command = train(&[
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    command.args(teacher);
    command
}

/// The recipe a run folder's `config.json` records (what `--resume` reads).
fn recipe(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
}

/// A recipe on which a student taught by its teacher alone (distillation weight 1) learns that
/// teacher's mapping of the 200 small training images: AdamW for a quick fit, and no weight
/// average, which would trail the mapping being learned.
const TAUGHT_ALONE: &[&str] = &[
    "--distill-weight",
    "1",
    "--epochs",
    "20",
    "--ema-decay",
    "0",
    "--optimizer",
    "adamw",
    "--lr",
    "0.002",
    "--no-test",
];

/// The class the served-network record at `record` predicts for each of `samples`.
fn predictions(record: &Path, samples: &[Sample]) -> Vec<usize> {
    let (net, _) = model::load_model(record, &Backend::default().device()).unwrap();
    let pixels = train::batcher::CifarBatcher::new(None, 0).pixels(samples);
    Inference::new(net, Backend::default())
        .unwrap()
        .probabilities(&pixels)
        .chunks_exact(NUM_CLASSES)
        .map(|p| model::explain::target(None, p))
        .collect()
}

/// The student at `student` gives the classes its teacher taught (`taught`, one per sample)
/// far more often than the samples' labels: it learned from the teacher, not the labels.
fn assert_learned_the_teacher(student: &Path, samples: &[Sample], taught: &[usize]) {
    let learned = predictions(student, samples);
    let agree = taught.iter().zip(&learned).filter(|(a, b)| a == b).count();
    let labelled = samples
        .iter()
        .zip(&learned)
        .filter(|(s, l)| usize::from(s.label) == **l)
        .count();
    println!(
        "{agree} of {} training images get the teacher's class, {labelled} their label",
        samples.len()
    );
    assert!(
        agree > 3 * labelled && agree * 3 > samples.len(),
        "{agree} agree with the teacher, {labelled} with the label, of {}",
        samples.len()
    );
}

fn training_split(data: &Path) -> Vec<Sample> {
    dataset::detect(data)
        .unwrap()
        .train(OnCorrupt::Fail)
        .unwrap()
        .samples
}

/// A made-up teacher that answers the *next* class (label + 1) for every view of every image.
/// A student taught by it alone (distillation weight 1) has no other signal, so it must learn
/// the teacher's mapping and not the labels: proof that the loss reads the teacher.
#[test]
fn a_student_learns_what_its_teacher_says_not_the_labels() {
    let tmp = small_folders();
    let data = tmp.path();
    let samples = training_split(data);
    let pad = 2;
    let taught: Vec<usize> = samples
        .iter()
        .map(|s| (usize::from(s.label) + 1) % NUM_CLASSES)
        .collect();
    let mut answers = Vec::new();
    for &class in &taught {
        for _ in 0..View::count(pad) {
            answers.extend((0..NUM_CLASSES).map(|c| if c == class { 0.91f32 } else { 0.01 }.ln()));
        }
    }
    let file = data.join("teacher.bin");
    TeacherLogits::from_log_probs(&samples, pad, &answers)
        .save(&file)
        .unwrap();
    let run = data.join("run");
    let log = ok(
        &student(data, &run, &["--teacher-logits", file.to_str().unwrap()])
            .args(TAUGHT_ALONE)
            .output()
            .unwrap(),
    );
    assert!(log.contains("distilling from"), "{log}");
    let recipe = recipe(&run);
    assert_eq!(recipe["teacher_logits"], file.to_str().unwrap());
    assert_eq!(
        recipe["label_smoothing"], 0.0,
        "no label smoothing when distilling"
    );
    assert_learned_the_teacher(&run.join("model.safetensors"), &samples, &taught);
}

#[test]
fn train_teach_writes_the_records_answers_for_this_data() {
    let tmp = small_folders();
    let data = tmp.path();
    let file = data.join("teacher.bin");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/model.safetensors");
    let log = ok(&Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["teach", shipped.to_str().unwrap(), "--crop-padding", "1"])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap());
    assert!(log.contains("teacher answers for 200 images"), "{log}");
    let samples = training_split(data);
    let teacher = TeacherLogits::load(&file).unwrap();
    teacher.check(&file, &samples, 1).unwrap();
    assert!(teacher.check(&file, &samples, 2).is_err());
    // The plain view's answer is the shipped model's own prediction.
    let (net, _) = model::load_model(&shipped, &Backend::default().device()).unwrap();
    let shipped = Inference::new(net, Backend::default()).unwrap();
    let pixels = train::batcher::CifarBatcher::new(None, 0).pixels(&samples[..20]);
    let mut answer = [0.0f32; NUM_CLASSES];
    for (i, probs) in shipped
        .probabilities(&pixels)
        .chunks_exact(NUM_CLASSES)
        .enumerate()
    {
        teacher.read(i, View::PLAIN, &mut answer);
        for (a, p) in answer.iter().zip(probs) {
            assert!(
                (a.exp() - p).abs() < 3e-3,
                "image {i}: {answer:?} vs {probs:?}"
            );
        }
    }
}

#[test]
fn a_teacher_for_other_data_or_a_damaged_one_is_refused_before_training() {
    let tmp = small_folders();
    let data = tmp.path();
    let samples = training_split(data);
    let other = &samples[..30];
    let wrong = data.join("other.bin");
    let values = vec![-2.3f32; other.len() * View::count(2) * NUM_CLASSES];
    TeacherLogits::from_log_probs(other, 2, &values)
        .save(&wrong)
        .unwrap();
    let right = data.join("right.bin");
    let values = vec![-2.3f32; samples.len() * View::count(2) * NUM_CLASSES];
    TeacherLogits::from_log_probs(&samples, 2, &values)
        .save(&right)
        .unwrap();
    let bytes = std::fs::read(&right).unwrap();
    let cut = data.join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for (file, why) in [
        (&wrong, "was made for 30 images"),
        (&cut, "is not a teacher file"),
        (&data.join("missing.bin"), "No such file"),
    ] {
        let run = data.join("run");
        let out = student(data, &run, &["--teacher-logits", file.to_str().unwrap()])
            .args(["--epochs", "1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{why}: {err}");
        assert!(!run.exists(), "nothing written");
    }
    for (flag, value, why) in [
        ("--distill-temperature", "0", "above 0"),
        ("--distill-weight", "1.5", "from 0 to 1"),
    ] {
        let out = train(&["--teacher-logits", right.to_str().unwrap(), flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{flag}: {err}");
    }
}

/// A wider teacher trains with the same binary (`--arch teacher-s`), survives being killed and
/// resumed, keeps a teacher's record that the served network's loader refuses, and `train
/// teach` averages it with a served network's record.
#[test]
fn a_wider_teacher_trains_resumes_and_teaches() {
    let tmp = small_folders();
    let data = tmp.path();
    let run = data.join("teacher");
    let args = [
        "--arch",
        "teacher-s",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "4",
        "--no-test",
    ];
    let done = kill_after_a_checkpoint(&args, &run);
    let log = ok(&resume(data, &run).arg("--no-test").output().unwrap());
    assert!(
        log.contains(&format!("resuming after epoch {done}")),
        "{log}"
    );
    assert!(log.contains("validation accuracy"), "{log}");
    let epochs: Vec<usize> = read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.epoch)
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4]);
    let record = run.join("teacher.safetensors");
    assert!(!run.join("model.safetensors").exists());
    let shape = model::teacher::teacher_config(&record).unwrap().unwrap();
    assert_eq!(
        Some(shape),
        model::teacher::TeacherConfig::named("teacher-s")
    );
    let refused = model::load_model(&record, &Backend::default().device()).unwrap_err();
    assert!(
        refused.to_string().contains("teacher's record"),
        "{refused}"
    );

    // An ensemble of the teacher run (a folder) and the shipped record.
    let file = data.join("answers.bin");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/model.safetensors");
    let log = ok(&Command::new(env!("CARGO_BIN_EXE_train"))
        .args(["teach", run.to_str().unwrap(), shipped.to_str().unwrap()])
        .args(["--crop-padding", "1", "--data", data.to_str().unwrap()])
        .args(["--out", file.to_str().unwrap()])
        .output()
        .unwrap());
    assert!(log.contains("teaching with 2 record(s)"), "{log}");
    let samples = training_split(data);
    let answers = TeacherLogits::load(&file).unwrap();
    answers.check(&file, &samples, 1).unwrap();
    let wide = WideTeacher::load(&record).unwrap();
    let (net, _) = model::load_model(&shipped, &Backend::default().device()).unwrap();
    let served = Inference::new(net, Backend::default()).unwrap();
    let pixels = train::batcher::CifarBatcher::new(None, 0).pixels(&samples[..20]);
    let (a, b) = (wide.probabilities(&pixels), served.probabilities(&pixels));
    let mut answer = [0.0f32; NUM_CLASSES];
    for i in 0..20 {
        answers.read(i, View::PLAIN, &mut answer);
        for c in 0..NUM_CLASSES {
            let mean = f32::midpoint(a[i * NUM_CLASSES + c], b[i * NUM_CLASSES + c]);
            assert!(
                (answer[c].exp() - mean).abs() < 3e-3,
                "image {i}: {answer:?} vs the mean {mean} of class {c}"
            );
        }
    }
}

/// A name that is neither the served network nor a teacher is refused with the names that
/// exist, as is a new arch for a run that resumes with its own.
#[test]
fn an_unknown_arch_is_refused_with_the_known_ones() {
    for (args, why) in [
        (
            ["--arch", "teacher-xl", "--data", "/nonexistent"],
            "cnn or one of teacher-s, teacher-m",
        ),
        (
            ["--arch", "teacher-s", "--resume", "/nonexistent"],
            "cannot be used with",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_train"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    }
}

/// The shipped record with its output layer rotated by one class: it answers the class after
/// the one the shipped network sees, written as an ordinary served record.
fn next_class_teacher(path: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/model.safetensors");
    let device = Backend::default().device();
    let (mut net, meta) = model::load_model(&shipped, &device).unwrap();
    let weight = net.fc2.weight.val();
    let [_, classes] = weight.dims();
    net.fc2.weight = Param::from_tensor(Tensor::cat(
        vec![
            weight.clone().narrow(1, classes - 1, 1),
            weight.narrow(1, 0, classes - 1),
        ],
        1,
    ));
    let bias = net.fc2.bias.as_ref().unwrap().val();
    net.fc2.bias = Some(Param::from_tensor(Tensor::cat(
        vec![
            bias.clone().narrow(0, classes - 1, 1),
            bias.narrow(0, 0, classes - 1),
        ],
        0,
    )));
    model::save_model(&net, path, &meta).unwrap();
}

/// Function matching end to end: a student taught only by a live teacher (run on every batch,
/// on mixed images) that names the class after the one it sees learns that mapping, not the
/// labels; the run folder's recipe records the teacher and the mixup (what `--resume` reads).
#[test]
fn a_live_teacher_with_mixup_teaches_what_it_says() {
    let tmp = small_folders();
    let data = tmp.path();
    let teacher = data.join("next-class.safetensors");
    next_class_teacher(&teacher);
    let run = data.join("run");
    let log = ok(&student(
        data,
        &run,
        &["--teacher", teacher.to_str().unwrap(), "--mixup"],
    )
    .args(TAUGHT_ALONE)
    .output()
    .unwrap());
    assert!(log.contains("run on every batch, mixup"), "{log}");
    let recipe = recipe(&run);
    assert_eq!(recipe["live_teacher"][0], teacher.to_str().unwrap());
    assert_eq!(recipe["mixup"], true);
    assert_eq!(recipe["label_smoothing"], 0.0);

    let samples = training_split(data);
    let taught = predictions(&teacher, &samples);
    assert_learned_the_teacher(&run.join("model.safetensors"), &samples, &taught);
}

/// Distillation settings that cannot go together are refused before any training.
#[test]
fn impossible_distillation_settings_are_refused() {
    let tmp = small_folders();
    let data = tmp.path();
    let teacher = data.join("next-class.safetensors");
    next_class_teacher(&teacher);
    let (data, teacher) = (data.to_str().unwrap(), teacher.to_str().unwrap());
    for (args, why) in [
        (vec!["--mixup"], "--mixup needs a live teacher"),
        (
            vec!["--teacher", teacher, "--mixup"],
            "--mixup needs --distill-weight 1",
        ),
        (
            vec!["--teacher", teacher, "--teacher-logits", teacher],
            "cannot be used with",
        ),
        (
            vec!["--teacher", "/nonexistent/teacher.safetensors"],
            "cannot load teacher record",
        ),
    ] {
        let run = tmp.path().join("refused");
        let out = train(&["--data", data, "--out", run.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
        assert!(!run.exists(), "{args:?} left a run folder");
    }
}
