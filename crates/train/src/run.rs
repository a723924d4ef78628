//! One training run: data, Learner, checkpoints, final test evaluation and the record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::LrSchedulerConfig;
use burn::lr_scheduler::constant::ConstantLr;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, ModuleOptimizer, SgdConfig};
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{Learner, SupervisedTraining};
use model::dataset::{self, OnCorrupt, Sample};
use model::eval::{Evaluation, evaluate};
use model::quantize;
use model::{Backend, Inference, Network, RecordMeta, save_model};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::batcher::{CifarBatch, CifarBatcher, numbered};
use crate::checkpoint::{AtomicCheckpointer, latest_complete, remove_partial, write_atomic};
use crate::config::{OptimizerKind, ScheduleKind, TrainConfig};
use crate::learner::Classifier;
use crate::renderer::RunRenderer;
use crate::teacher::{Answers, Mean, TeacherLogits, load_answers};

// File names inside a run folder.

/// The recipe ([`TrainConfig`]), written when the run starts and read back by `--resume`.
pub const CONFIG_FILE: &str = "config.json";
/// One JSON line per finished epoch (losses, accuracies, learning rate, speed): what the
/// curves are drawn from.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The trained network's record, ready for the server and the CLI.
pub const RECORD_FILE: &str = "model.safetensors";
/// A teacher run's record (`--arch teacher-…`), for `train teach`; never served.
pub const TEACHER_RECORD_FILE: &str = "teacher.safetensors";
/// The test-set evaluation ([`TestReport`]), when the run evaluated one.
pub const TEST_FILE: &str = "test.json";
/// Burn's per-epoch checkpoints (model, optimiser, scheduler), what `--resume` continues from.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// Where a distilling run's teacher answers come from: one or the other, never both
/// ([`TrainConfig::check_distillation`]). The batcher keeps its own copy of this choice, with
/// a live teacher behind the lock its loader workers share.
enum Distiller {
    /// Answers `train teach` stored for every view of every training image.
    Stored(Arc<TeacherLogits>),
    /// Records run on every training batch (averaged when several).
    Live(Box<dyn Answers>),
}

/// The teacher `config` names, if any, loaded: stored answers checked against
/// `training_split` (the whole split, before the hold-out is drawn: the answers are keyed by
/// position in it) and the recipe's crop padding; live records on the inference engine.
/// `config` has passed [`TrainConfig::check_distillation`], so it names one kind at most.
fn load_teacher(config: &TrainConfig, training_split: &[Sample]) -> Result<Option<Distiller>> {
    if let Some(path) = &config.teacher_logits {
        debug_assert!(config.live_teacher.is_empty(), "checked: one teacher");
        let answers = TeacherLogits::load(path)?;
        answers.check(path, training_split, config.crop_padding)?;
        println!(
            "distilling from {} ({} images)",
            path.display(),
            answers.images()
        );
        return Ok(Some(Distiller::Stored(Arc::new(answers))));
    }
    if config.live_teacher.is_empty() {
        return Ok(None);
    }
    let engine = Backend::default_inference();
    let members = config
        .live_teacher
        .iter()
        .map(|record| load_answers(record, engine))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "distilling from {} record(s) run on every batch{}",
        members.len(),
        if config.mixup { ", mixup" } else { "" }
    );
    Ok(Some(Distiller::Live(Box::new(Mean(members)))))
}

/// The training batches' maker by `config`'s recipe (its augmentation and seed) with
/// `teacher`'s answers ([`load_teacher`]): stored, or live with mixup when the recipe asks.
fn training_batcher(config: &TrainConfig, teacher: Option<Distiller>) -> CifarBatcher {
    let augment = config.augment.then_some(config.crop_padding);
    let batcher = CifarBatcher::new(augment, config.seed);
    match teacher {
        None => batcher,
        Some(Distiller::Stored(answers)) => batcher.with_teacher(answers),
        Some(Distiller::Live(network)) => batcher.with_live_teacher(network, config.mixup),
    }
}

/// Removes what an earlier run left at `path`, a folder when `folder`, else a file: true when
/// it was there. Anything else there is left for the step that needs the path to report.
fn remove_old(path: &Path, folder: bool) -> Result<bool> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() != folder => return Ok(false),
        Ok(_) if folder => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => Err(e),
    };
    removed
        .map(|()| true)
        .with_context(|| format!("cannot remove {}", path.display()))
}

/// Everything a run needs besides the recipe.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the data set is: a folder in which [`dataset::detect`] finds either layout.
    pub data: PathBuf,
    /// The run folder, created if missing, that receives every file named above.
    pub out: PathBuf,
    /// The backend to train on (one that [`Backend::trains`]).
    pub backend: Backend,
    /// What to do with an unreadable image or a truncated batch file.
    pub on_corrupt: OnCorrupt,
    /// Continue from the run folder's last complete checkpoint.
    pub resume: bool,
    /// Plain progress lines even on a terminal.
    pub plain: bool,
    /// Evaluate the test set at the end. Off while searching a recipe, which is chosen on the
    /// validation split alone.
    pub test: bool,
}

/// What a finished run measured.
#[derive(Debug)]
pub struct RunSummary {
    /// The trained network (served or teacher) on the held-out validation split.
    pub valid: Evaluation,
    /// The record written: `model.safetensors`, or a teacher's `teacher.safetensors`.
    pub record: PathBuf,
    /// The served network on the test set, when asked for.
    pub test: Option<Evaluation>,
}

/// What `test.json` holds.
#[derive(Debug, Serialize)]
pub struct TestReport<'a> {
    /// The saved network's accuracy on the test set.
    pub evaluation: &'a Evaluation,
    /// Training images skipped as unreadable: a nonzero count qualifies the result.
    pub skipped_train: usize,
    /// Test images skipped as unreadable, left out of `evaluation`.
    pub skipped_test: usize,
    /// The backend the run trained and evaluated on.
    pub backend: String,
}

/// Runs training to the end and evaluates the network it saves.
pub fn run(config: &TrainConfig, opts: &RunOptions) -> Result<RunSummary> {
    if !opts.backend.trains() {
        bail!(
            "backend '{}' runs inference only; train with one of: {}",
            opts.backend,
            Backend::available()
                .iter()
                .filter(|b| b.trains())
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Read the arch, the data and the teacher before touching the run folder: a wrong name,
    // --data or teacher file leaves nothing behind.
    let teacher_shape = config.teacher()?;
    config.check_distillation()?;
    let layout = dataset::detect(&opts.data)?;
    let started = std::time::Instant::now();
    let train_split = layout.train(opts.on_corrupt)?;
    let test_split = layout.test(opts.on_corrupt)?;
    println!(
        "data: {:?}; {} train and {} test images decoded in {:.1} s ({} train, {} test skipped)",
        layout,
        train_split.samples.len(),
        test_split.samples.len(),
        started.elapsed().as_secs_f64(),
        train_split.skipped.len(),
        test_split.skipped.len()
    );
    let teacher = load_teacher(config, &train_split.samples)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create run folder {}", opts.out.display()))?;
    let ckpt_dir = opts.out.join(CHECKPOINT_DIR);
    let resume_epoch = if opts.resume {
        let partial = remove_partial(&ckpt_dir);
        if partial > 0 {
            tracing::warn!("removed {partial} partly written checkpoint file(s)");
        }
        let epoch = latest_complete(&ckpt_dir);
        match epoch {
            Some(e) => println!("resuming after epoch {e} from {}", ckpt_dir.display()),
            None => println!(
                "no complete checkpoint in {}: starting over",
                ckpt_dir.display()
            ),
        }
        epoch
    } else {
        // A fresh run starts the folder over, before writing its recipe: an earlier run's
        // checkpoints beside this run's would have a later --resume continue from the newest
        // of either, and its records or test report would pass for this run's.
        let mut removed = false;
        for file in [METRICS_FILE, RECORD_FILE, TEACHER_RECORD_FILE, TEST_FILE] {
            removed |= remove_old(&opts.out.join(file), false)?;
        }
        removed |= remove_old(&ckpt_dir, true)?;
        if removed {
            println!(
                "removed an earlier run's checkpoints and results from {}",
                opts.out.display()
            );
        }
        write_atomic(
            &opts.out.join(CONFIG_FILE),
            serde_json::to_string_pretty(config)?.as_bytes(),
        )?;
        None
    };

    let (train, valid) = split_valid(
        numbered(train_split.samples),
        config.valid_fraction,
        config.hold_out_seed(),
    )?;
    let valid_items = valid;
    let valid: Vec<Sample> = valid_items.iter().map(|item| item.sample.clone()).collect();
    let calibration_set: Vec<Sample> = quantize::spread(&train, quantize::CALIBRATION_IMAGES)
        .into_iter()
        .map(|item| item.sample)
        .collect();

    let device = opts.backend.device();
    device.seed(config.seed);
    let autodiff = device.clone().autodiff();

    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let batcher = training_batcher(config, teacher);
    let loader_train = DataLoaderBuilder::new(batcher)
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .num_workers(config.workers)
        .build(InMemDataset::new(train));
    let loader_valid = DataLoaderBuilder::new(CifarBatcher::new(None, config.seed))
        .batch_size(config.batch_size.max(256))
        .num_workers(config.workers)
        .build(InMemDataset::new(valid_items));

    let loaders = (loader_train, loader_valid);
    if let Some(shape) = teacher_shape {
        let net = initial_weights(config.seed, &autodiff, |d| shape.init(d))?;
        let net = fit(net, config, opts, loaders, resume_epoch, steps_per_epoch)?;
        return finish_teacher(&net, &shape, &valid, opts);
    }
    let net = initial_weights(config.seed, &autodiff, model::Cnn::init)?;
    let net = fit(net, config, opts, loaders, resume_epoch, steps_per_epoch)?;

    // Evaluate with the CPU fast path where built: same weights, several times faster.
    let engine = if Backend::available().contains(&Backend::Fast) {
        Backend::Fast
    } else {
        opts.backend
    };
    let inference = Inference::new(net, engine)?;
    let valid = evaluate(&inference, &valid, 256, |_| {});
    println!(
        "validation accuracy {:.2}% on {} images",
        valid.accuracy * 100.0,
        valid.images
    );
    let net = inference.model();
    // The int8 path's ranges, measured on training images, so that the record can be served
    // with `--precision int8` as it is (the fast path is the one that runs int8).
    let mut int8 = if engine == Backend::Fast {
        Some(quantize::calibrate(net, &calibration_set)?)
    } else {
        None
    };
    if !opts.test {
        let meta = RecordMeta {
            epochs: Some(config.epochs),
            created: Some(crate::time::rfc3339_now()),
            recipe: Some(config.recipe()),
            int8,
            ..RecordMeta::default()
        };
        save_model(net, &opts.out.join(RECORD_FILE), &meta)?;
        plot(&opts.out)?;
        return Ok(RunSummary {
            valid,
            record: opts.out.join(RECORD_FILE),
            test: None,
        });
    }
    println!("evaluating on {} test images", test_split.samples.len());
    let evaluation = evaluate(&inference, &test_split.samples, 256, |_| {});
    if let Some(calibration) = &mut int8 {
        let quantized = Inference::new(net.clone(), Backend::Fast)?
            .with_precision(quantize::Precision::Int8, Some(calibration))?;
        let e = evaluate(&quantized, &test_split.samples, 256, |_| {});
        println!(
            "test accuracy {:.2}% (int8: {:.2}%) on {} images",
            evaluation.accuracy * 100.0,
            e.accuracy * 100.0,
            e.images
        );
        calibration.test_accuracy = Some(e.accuracy);
    }
    let meta = RecordMeta {
        test_accuracy: Some(evaluation.accuracy),
        epochs: Some(config.epochs),
        created: Some(crate::time::rfc3339_now()),
        recipe: Some(config.recipe()),
        int8,
        ..RecordMeta::default()
    };
    save_model(net, &opts.out.join(RECORD_FILE), &meta)?;
    let report = TestReport {
        evaluation: &evaluation,
        skipped_train: train_split.skipped.len(),
        skipped_test: test_split.skipped.len(),
        backend: opts.backend.to_string(),
    };
    write_atomic(
        &opts.out.join(TEST_FILE),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    plot(&opts.out)?;
    Ok(RunSummary {
        valid,
        record: opts.out.join(RECORD_FILE),
        test: Some(evaluation),
    })
}

/// The training and validation batches of a run.
type Loaders = (
    Arc<dyn DataLoader<CifarBatch>>,
    Arc<dyn DataLoader<CifarBatch>>,
);

/// Trains `net` with Burn's Learner (checkpoints, metrics log, progress) by `config`'s recipe,
/// from the checkpoint of `resume_epoch` when given, and returns the network to keep: the
/// weight average where the recipe keeps one.
fn fit<N: Network>(
    net: N,
    config: &TrainConfig,
    opts: &RunOptions,
    (loader_train, loader_valid): Loaders,
    resume_epoch: Option<usize>,
    steps_per_epoch: usize,
) -> Result<N> {
    let ckpt_dir = opts.out.join(CHECKPOINT_DIR);
    let mut training = SupervisedTraining::new(&opts.out, loader_train, loader_valid)
        // Burn would install a global subscriber of its own writing to experiment.log; the
        // binary's (stderr, RUST_LOG) has them, and a library leaves the choice to its caller.
        .with_application_logger(None)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .with_custom_checkpointers(
            AtomicCheckpointer::new(&ckpt_dir, "model"),
            AtomicCheckpointer::new(&ckpt_dir, "optim"),
            AtomicCheckpointer::new(&ckpt_dir, "scheduler"),
        )
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
        .num_epochs(config.epochs)
        .summary();
    let renderer = RunRenderer::new(
        &opts.out.join(METRICS_FILE),
        training.interrupter(),
        resume_epoch,
        opts.plain,
    )?;
    let metrics_failure = renderer.failure();
    training = training.renderer(Box::new(renderer));
    if let Some(epoch) = resume_epoch {
        training = training.checkpoint(epoch);
    }

    let device = net
        .devices()
        .into_iter()
        .next()
        .context("the network has no device")?;
    let classifier = Classifier::new(net, config.label_smoothing, config.ema_decay, &device)
        .with_distillation(config.distill_temperature, config.distill_weight);
    let learner = Learner::new(
        classifier,
        optimizer(config),
        scheduler(config, steps_per_epoch)?,
    );
    let result = training.launch(learner);
    if let Some(why) = metrics_failure.take() {
        bail!("{why}; the run stopped (resume it with --resume once the log can be written)");
    }
    Ok(result.model.into_served())
}

/// A trained teacher's end: its validation accuracy (Burn's forward on the CPU backend, the
/// fused blocks), its record `teacher.safetensors` and the plots. A teacher never meets the
/// test set: it is chosen on validation and never ships.
fn finish_teacher(
    net: &model::teacher::TeacherNet,
    shape: &model::teacher::TeacherConfig,
    valid: &[Sample],
    opts: &RunOptions,
) -> Result<RunSummary> {
    let answers = crate::teacher::WideTeacher::new(net);
    let evaluation =
        model::eval::evaluate_probabilities(|x| answers.probabilities(x), valid, 256, |_| {});
    println!(
        "validation accuracy {:.2}% on {} images",
        evaluation.accuracy * 100.0,
        evaluation.images
    );
    let record = opts.out.join(TEACHER_RECORD_FILE);
    model::teacher::save_teacher(answers.net(), shape, &record)?;
    if opts.test {
        println!("a teacher is not evaluated on the test set: it is chosen on validation");
    }
    plot(&opts.out)?;
    Ok(RunSummary {
        valid: evaluation,
        record,
        test: None,
    })
}

/// The network's starting weights (`init`: the served network's or a teacher's), drawn from the
/// CPU backend's generator seeded with `seed` whatever backend trains, then copied to `device`:
/// one seed is one starting point on every backend (`tests/wgpu.rs` trains on both from it). On
/// the CPU this is the same draw as initialising on `device` directly.
fn initial_weights<N: Network>(
    seed: u64,
    device: &burn::tensor::Device,
    init: impl Fn(&burn::tensor::Device) -> N,
) -> Result<N> {
    let cpu = if Backend::available().contains(&Backend::Fast) {
        Backend::Fast.device()
    } else {
        device.clone()
    };
    cpu.seed(seed);
    let net = init(&cpu);
    Ok(model::record::copy_weights(&net, init(device))?)
}

/// (Re)draws a run folder's plots from its `metrics.jsonl` and `test.json`.
pub fn plot(run: &Path) -> Result<()> {
    let metrics = run.join(METRICS_FILE);
    // A run that has not finished an epoch has no log yet; one that has must have a readable one.
    let epochs = if metrics.exists() {
        crate::metrics_log::read_metrics(&metrics)?
    } else {
        Vec::new()
    };
    let evaluation: Option<Evaluation> = std::fs::read_to_string(run.join(TEST_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v["evaluation"].clone()).ok());
    if epochs.is_empty() && evaluation.is_none() {
        bail!(
            "{} holds neither {METRICS_FILE} nor {TEST_FILE}",
            run.display()
        );
    }
    crate::plots::write_all(run, &epochs, evaluation.as_ref())
}

/// Holds out a seeded random `fraction` of `samples` for validation (the same images for any
/// item type: the draw depends on the count alone).
pub fn split_valid<T>(mut samples: Vec<T>, fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&fraction) {
        bail!("validation fraction must be in [0, 1), got {fraction}");
    }
    samples.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5eed));
    let n_valid = ((samples.len() as f64 * fraction).round() as usize).max(1);
    if n_valid >= samples.len() {
        bail!(
            "{} training images are too few to hold out a validation split",
            samples.len()
        );
    }
    let valid = samples.split_off(samples.len() - n_valid);
    Ok((samples, valid))
}

fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let wd = config.weight_decay;
    match config.optimizer {
        OptimizerKind::Adamw => AdamWConfig::new().with_weight_decay(wd).init(),
        OptimizerKind::Adam => AdamConfig::new()
            .with_weight_decay((wd > 0.0).then(|| WeightDecayConfig::new(wd)))
            .init(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new().with_momentum(0.9).with_nesterov(true),
            ))
            .with_weight_decay((wd > 0.0).then(|| WeightDecayConfig::new(wd)))
            .init(),
    }
}

/// Linear warm-up from a 25th of the peak, then cosine decay; the scheduler steps per batch.
fn scheduler(config: &TrainConfig, steps_per_epoch: usize) -> Result<ModuleLrScheduler> {
    let lr = config.learning_rate;
    let total = (config.epochs * steps_per_epoch).max(2);
    let warmup = (config.warmup_epochs * steps_per_epoch).min(total - 1);
    let built = match config.schedule {
        ScheduleKind::Constant => Ok(ConstantLr::from(lr).into()),
        ScheduleKind::Cosine if warmup == 0 => CosineAnnealingLrSchedulerConfig::new(lr, total)
            .with_min_lr(config.min_learning_rate)
            .init(),
        ScheduleKind::Cosine => SequentialLrSchedulerConfig::new(
            vec![
                LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(lr / 25.0, lr, warmup)),
                LrSchedulerConfig::Cosine(
                    CosineAnnealingLrSchedulerConfig::new(lr, total - warmup)
                        .with_min_lr(config.min_learning_rate),
                ),
            ],
            vec![warmup],
        )
        .init(),
    };
    built.map_err(|e| anyhow::anyhow!("invalid learning-rate schedule: {e}"))
}

/// The default run folder: `runs/<UTC timestamp>`.
pub fn default_run_dir() -> PathBuf {
    Path::new("runs").join(crate::time::rfc3339_now().replace(':', "-"))
}

#[cfg(test)]
mod tests {
    use burn::data::dataloader::batcher::Batcher as _;
    use image::RgbImage;

    use super::*;

    /// A teacher that answers the same for any image: only the wiring is under test.
    struct Uniform;

    impl Answers for Uniform {
        fn probabilities(&self, pixels: &[f32]) -> Vec<f32> {
            vec![0.1; pixels.len() / model::IMAGE_FLOATS * model::NUM_CLASSES]
        }
    }

    /// The recipe's live teacher and mixup reach the training batches: a batch of a black and
    /// a white image (no crop) holds them as they are without mixup, blends with it.
    #[test]
    fn the_recipes_teacher_and_mixup_reach_the_training_batches() {
        let items = numbered(
            [0u8, 255]
                .into_iter()
                .map(|v| Sample {
                    image: RgbImage::from_pixel(32, 32, image::Rgb([v; 3])),
                    label: 0,
                })
                .collect(),
        );
        let plain = CifarBatcher::new(None, 0).pixels(
            &items
                .iter()
                .map(|item| item.sample.clone())
                .collect::<Vec<_>>(),
        );
        let device = Backend::default().device();
        let recipe = TrainConfig::new()
            .with_augment(false)
            .with_live_teacher(vec!["unused".into()])
            .with_distill_weight(1.0);
        for mixup in [false, true] {
            let config = recipe.clone().with_mixup(mixup);
            let batch = training_batcher(&config, Some(Distiller::Live(Box::new(Uniform))))
                .batch(items.clone(), &device);
            assert!(batch.teacher.is_some(), "the live teacher answers");
            let images = batch.images.into_data().try_to_vec::<f32>().unwrap();
            assert_eq!(images == plain, !mixup, "mixup {mixup}");
        }
    }
}
