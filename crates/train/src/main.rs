//! `train`: train the CIFAR-10 CNN and write a run folder.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use model::Backend;
use model::dataset::OnCorrupt;
use train::config::{CNN, OptimizerKind, ScheduleKind};
use train::download::{self, Checksum, DownloadOptions};
use train::run::{CONFIG_FILE, default_run_dir};
use train::{RunOptions, TrainConfig};

/// Train the CIFAR-10 CNN (64×64 input) with Burn's Learner.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
// Each bool is a command-line switch of its own, not a state.
#[allow(clippy::struct_excessive_bools)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// CIFAR-10 directory: image folders (train/<class>, test/<class>) or the official
    /// binary release (cifar-10-batches-bin/*.bin). Without it, train looks in
    /// $CIFAR10_DATA, then ./data, and downloads the official release into ./data when
    /// neither holds CIFAR-10.
    // clap shows this doc as the --help text, where backticks would print as they are.
    #[allow(clippy::doc_markdown)]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to download CIFAR-10 from when no data is found (a mirror of the official
    /// binary release works too).
    #[arg(long, value_name = "URL", default_value = download::DEFAULT_URL)]
    download_url: String,
    /// Checksum of the file at --download-url, checked before unpacking: md5 hex, or
    /// md5:<hex> / sha256:<hex>.
    #[arg(long, value_name = "CHECKSUM", default_value = download::DEFAULT_CHECKSUM)]
    download_checksum: Checksum,
    /// Run folder to write (default: runs/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last complete checkpoint, with its recipe.
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// What to train: cnn (the served network) or a wider teacher to distil it from,
    /// teacher-s or teacher-m (never served; docs/distillation.md).
    #[arg(long, default_value_t = recipe().arch, value_parser = arch, conflicts_with = "resume")]
    arch: String,
    #[arg(long, default_value_t = recipe().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = recipe().batch_size)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = recipe().learning_rate)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = recipe().optimizer)]
    optimizer: OptimizerKind,
    #[arg(long, default_value_t = recipe().weight_decay)]
    weight_decay: f32,
    #[arg(long, value_enum, default_value_t = recipe().schedule)]
    schedule: ScheduleKind,
    #[arg(long, default_value_t = recipe().warmup_epochs)]
    warmup_epochs: usize,
    /// Label smoothing of the cross-entropy [default: 0.1, or 0 when distilling or training a
    /// teacher: smoothed teachers and students distil worse (Müller et al., arXiv 1906.02629)].
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Turn off random crop and flip.
    #[arg(long)]
    no_augment: bool,
    /// Largest shift of the random crop, in pixels of the 32×32 image.
    #[arg(long, default_value_t = recipe().crop_padding)]
    crop_padding: u32,
    /// Keep an exponential moving average of the weights with this decay per step, and save
    /// and serve it (0: off).
    #[arg(long, default_value_t = recipe().ema_decay)]
    ema_decay: f64,
    /// Skip the test set: for searching a recipe on the validation split.
    #[arg(long)]
    no_test: bool,
    /// Share of the training images held out for validation.
    #[arg(long, default_value_t = recipe().valid_fraction)]
    valid_fraction: f64,
    #[arg(long, default_value_t = recipe().seed)]
    seed: u64,
    /// Seed of the validation hold-out alone (default: --seed), so that runs of several seeds
    /// hold out the same images.
    #[arg(long)]
    valid_seed: Option<u64>,
    /// Data-loader threads.
    #[arg(long, default_value_t = recipe().workers)]
    workers: usize,
    /// Distil from a teacher's stored answers (a file `train teach` wrote for this data set and
    /// crop padding): the loss reads the teacher's answer for exactly the view each image is
    /// shown in.
    #[arg(long, value_name = "FILE")]
    teacher_logits: Option<PathBuf>,
    /// Distil from teacher records (files or run folders; several are averaged) run on every
    /// training batch instead of stored answers: the teacher answers for exactly the pixels the
    /// student is shown, mixed ones included.
    #[arg(
        long = "teacher",
        value_name = "RECORD",
        num_args = 1..,
        conflicts_with = "teacher_logits"
    )]
    teacher: Vec<PathBuf>,
    /// Mixup: blend each training image with another of its batch (weight uniform in 0..1); needs
    /// --teacher, which labels the blends, and --distill-weight 1.
    #[arg(long)]
    mixup: bool,
    /// Temperature of the distillation term (above 0).
    #[arg(long, default_value_t = recipe().distill_temperature, value_parser = positive)]
    distill_temperature: f64,
    /// Share of the loss that is the distillation term, 0 to 1 (the rest: the labels'
    /// cross-entropy).
    #[arg(long, default_value_t = recipe().distill_weight, value_parser = share)]
    distill_weight: f64,
    /// Compute backend (flex, ndarray, wgpu: those compiled in; not the inference-only `fast`).
    #[arg(long, default_value_t = Backend::default())]
    backend: Backend,
    /// What to do with an unreadable image or a truncated batch file.
    #[arg(long, default_value = "fail")]
    on_corrupt: OnCorrupt,
    /// Plain progress lines even on a terminal (no dashboard, no download progress bar).
    #[arg(long)]
    plain: bool,
}

/// A finite number above 0.
/// A teacher's path as the recipe keeps it: absolute, so that `--resume` finds it from any
/// directory (as given when it cannot be made absolute).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a number above 0, got '{s}'")),
    }
}

/// `cnn` or a teacher's name.
fn arch(s: &str) -> Result<String, String> {
    let config = TrainConfig::new().with_arch(s.to_string());
    config.teacher().map_err(|e| e.to_string())?;
    Ok(config.arch)
}

/// A number from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 0 to 1, got '{s}'")),
    }
}

/// The shipped recipe, [`TrainConfig`]'s defaults: the flags' defaults come from it, so that
/// the bare command reproduces the shipped model.
fn recipe() -> TrainConfig {
    TrainConfig::new()
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Redraw a run folder's PNG plots from its metrics.jsonl and test.json.
    Plot { run: PathBuf },
    /// Compute a teacher's answers for every augmented view of every training image, for
    /// `--teacher-logits`: the records' mean probabilities (an ensemble), stored as fp16
    /// log-probabilities.
    Teach {
        /// The teacher's records: files or run folders, served networks' (model.safetensors)
        /// or wide teachers' (teacher.safetensors).
        #[arg(required = true)]
        records: Vec<PathBuf>,
        /// CIFAR-10 directory (as train's --data).
        #[arg(long)]
        data: PathBuf,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The crop padding of the student runs it will teach.
        #[arg(long, default_value_t = recipe().crop_padding,
              value_parser = clap::value_parser!(u32).range(0..=16))]
        crop_padding: u32,
        /// What to do with an unreadable image (as train's --on-corrupt; the student must
        /// choose the same, or its images differ from the teacher's and the file is refused).
        #[arg(long, default_value = "fail")]
        on_corrupt: OnCorrupt,
    },
}

fn main() -> ExitCode {
    train::keep_large_blocks_in_the_heap();
    let args = Args::parse();
    init_logging();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Diagnostics (warnings, errors, and Burn's own messages) go to stderr, filtered by `RUST_LOG`
/// (default: `info` for this project's crates, warnings and errors for the others); the run's
/// progress lines stay on stdout.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,train=info,model=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn run(args: &Args) -> Result<()> {
    if let Some(Command::Plot { run }) = &args.command {
        train::run::plot(run)?;
        println!("plots written to {}", run.display());
        return Ok(());
    }
    if let Some(Command::Teach {
        records,
        data,
        out,
        crop_padding,
        on_corrupt,
    }) = &args.command
    {
        return train::teacher::teach(records, data, *crop_padding, out, *on_corrupt);
    }
    // Read here rather than through clap's `env`, so that an explicit --data (never
    // second-guessed) stays distinguishable from the environment (one place to look among others).
    let env_data = std::env::var_os("CIFAR10_DATA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let fetch = DownloadOptions {
        progress: !args.plain,
        ..DownloadOptions::new(args.download_url.clone(), args.download_checksum.clone())
    };
    let data = download::locate_or_download(args.data.as_deref(), env_data.as_deref(), &fetch)?;
    let (config, out, resume) = match &args.resume {
        Some(dir) => {
            let path = dir.join(CONFIG_FILE);
            let config = std::fs::read_to_string(&path)
                .map_err(anyhow::Error::from)
                .and_then(|json| Ok(TrainConfig::from_run_json(&json)?))
                .with_context(|| format!("cannot read the run's recipe {}", path.display()))?;
            (config, dir.clone(), true)
        }
        None => {
            let config = TrainConfig::new()
                .with_arch(args.arch.clone())
                .with_epochs(args.epochs)
                .with_batch_size(args.batch_size)
                .with_learning_rate(args.lr)
                .with_optimizer(args.optimizer)
                .with_weight_decay(args.weight_decay)
                .with_schedule(args.schedule)
                .with_warmup_epochs(args.warmup_epochs)
                .with_label_smoothing(args.label_smoothing.unwrap_or(
                    if args.teacher_logits.is_some() || !args.teacher.is_empty() || args.arch != CNN
                    {
                        0.0
                    } else {
                        recipe().label_smoothing
                    },
                ))
                .with_augment(!args.no_augment)
                .with_crop_padding(args.crop_padding)
                .with_ema_decay(args.ema_decay)
                .with_valid_fraction(args.valid_fraction)
                .with_seed(args.seed)
                .with_valid_seed(args.valid_seed)
                .with_workers(args.workers)
                .with_teacher_logits(args.teacher_logits.as_deref().map(absolute))
                .with_live_teacher(args.teacher.iter().map(|f| absolute(f)).collect())
                .with_mixup(args.mixup)
                .with_distill_temperature(args.distill_temperature)
                .with_distill_weight(args.distill_weight);
            (
                config,
                args.out.clone().unwrap_or_else(default_run_dir),
                false,
            )
        }
    };
    let opts = RunOptions {
        data,
        out: out.clone(),
        backend: args.backend,
        on_corrupt: args.on_corrupt,
        resume,
        plain: args.plain,
        test: !args.no_test,
    };
    println!(
        "run folder {}; backend {}; {}",
        out.display(),
        opts.backend,
        config.recipe()
    );
    let summary = train::run(&config, &opts)?;
    if let Some(eval) = &summary.test {
        println!(
            "test accuracy {:.2}% (top-3 {:.2}%) on {} images",
            eval.accuracy * 100.0,
            eval.top3_accuracy * 100.0,
            eval.images,
        );
    }
    println!("record {}", summary.record.display());
    Ok(())
}
