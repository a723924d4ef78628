//! `cnn`: classify images and evaluate records with the CIFAR-10 CNN from a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::prelude::Device;
use clap::{CommandFactory, Parser, Subcommand};
use model::dataset::{self, OnCorrupt};
use model::eval::evaluate;
use model::explain::Method;
use model::{
    Backend, CLASSES, Cnn, Inference, PARAMETER_COUNT, Precision, Preprocessor, RecordMeta, Tta,
};
use serde_json::json;

/// Classify images and evaluate records with the CIFAR-10 CNN.
#[derive(Parser, Debug)]
#[command(name = "cnn", version, about)]
struct Cli {
    /// Record to use (default: the trained model built into this binary).
    #[arg(long, global = true, env = "CNN_MODEL")]
    model: Option<PathBuf>,
    /// Compute backend (those compiled in: see `cnn info`; `fast` is the CPU fast path).
    #[arg(long, global = true, default_value_t = Backend::default_inference())]
    backend: Backend,
    /// Arithmetic of the fast backend: fp32, or int8 (needs a calibrated record: see
    /// `cnn calibrate`).
    #[arg(long, global = true, env = "CNN_PRECISION", default_value_t = Precision::Fp32)]
    precision: Precision,
    #[command(subcommand)]
    command: Command,
}

// clap prints these docs as the --help text, where backticks and `<..>` would show as typed.
#[allow(clippy::doc_markdown)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Classify image files, or every file under directories.
    Classify {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Classes shown per image.
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        /// One JSON document.
        #[arg(long, conflicts_with = "jsonl")]
        json: bool,
        /// One JSON line per image.
        #[arg(long)]
        jsonl: bool,
        /// Images per model batch.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        #[command(flatten)]
        tta: TtaArg,
    },
    /// Accuracy on a labelled CIFAR-10 set: a folder of `<class>/` image folders (e.g.
    /// cifar10/test), or the test split of a data set (train/ + test/ folders, or the official
    /// binary files).
    Eval {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        #[command(flatten)]
        tta: TtaArg,
    },
    /// Calibrate the int8 path: measure the activation ranges on training images, score int8
    /// and FP32 on the test set, and write the record with the ranges and int8's accuracy.
    Calibrate {
        /// A CIFAR-10 data set: train/ and test/ folders, or the official binary files.
        #[arg(long)]
        data: PathBuf,
        /// Training images to measure, spread evenly over the split.
        #[arg(long, default_value_t = model::quantize::CALIBRATION_IMAGES)]
        images: usize,
        /// Record to write (may be the one read).
        #[arg(long)]
        out: PathBuf,
    },
    /// Explain each image's prediction: which pixels it rests on, drawn as a heatmap over the
    /// image into --out (one PNG per image; with --json also the heatmap's values).
    /// Methods: gradcam (about one forward pass), occlusion (65 forward passes), saliency
    /// (gradient × input: one forward and backward pass), integrated-gradients (--steps of
    /// them). See docs/explanations.md.
    Explain {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// gradcam, occlusion, saliency or integrated-gradients.
        #[arg(long, default_value_t = Method::default())]
        method: Method,
        /// The class to explain, by name or index (default: the predicted class).
        #[arg(long, value_parser = |s: &str| model::explain::parse_class(s).map_err(|e| e.to_string()))]
        target: Option<usize>,
        /// Integrated gradients' steps.
        #[arg(long, default_value_t = model::explain::DEFAULT_STEPS)]
        steps: usize,
        /// Folder the pictures are written to (created if missing).
        #[arg(long, default_value = "explanations")]
        out: PathBuf,
        /// One JSON document.
        #[arg(long, conflicts_with = "jsonl")]
        json: bool,
        /// One JSON line per image.
        #[arg(long)]
        jsonl: bool,
    },
    /// Classify image files, or every file under directories, through a running server
    /// (`/classify`, or `/classify/batch` in batches of at most the server's `--max-files`).
    Remote {
        /// Server base URL, e.g. http://127.0.0.1:8000
        url: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, conflicts_with = "jsonl")]
        json: bool,
        #[arg(long)]
        jsonl: bool,
    },
    /// Convert weights saved by the original PyTorch project (state_dict .pth) into a record.
    ImportPytorch {
        /// The `.pth` file (`torch.save(model.state_dict(), path)` of the original SimpleCNN).
        pth: PathBuf,
        /// Record to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Architecture, parameter count, record metadata and backends.
    Info,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(&cli) {
        Ok(code) => code,
        // The reader of our output has gone (`cnn eval ... | head`): nothing is left to say,
        // and it is not a failure (as ripgrep and the coreutils see it).
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

/// Diagnostics (ours and the libraries', `log` records included) go to stderr, filtered by
/// `RUST_LOG` (default: warnings and errors); results go to stdout.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn load(cli: &Cli, device: &Device) -> Result<(Cnn, RecordMeta, String)> {
    let loaded =
        model::record::load_or_shipped(cli.model.as_deref(), device).with_context(|| match &cli
            .model
        {
            Some(p) => format!("cannot load {}", p.display()),
            None => "cannot load the built-in record".to_string(),
        })?;
    Ok((loaded.model, loaded.meta, loaded.source))
}

fn run(cli: &Cli) -> Result<ExitCode> {
    if let Command::Remote {
        url,
        files,
        json,
        jsonl,
    } = &cli.command
    {
        return remote::classify(url, files, *json, *jsonl);
    }
    let device = cli.backend.device();
    match &cli.command {
        Command::Remote { .. } => unreachable!("handled above"),
        Command::Completions { shell } => {
            // clap_complete panics on a failed write; a buffer cannot fail.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "cnn", &mut script);
            std::io::stdout().write_all(&script)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportPytorch { pth, out } => {
            let net = model::import_pytorch(pth, &device)
                .with_context(|| format!("cannot import {}", pth.display()))?;
            let meta = RecordMeta {
                recipe: Some(format!(
                    "imported from PyTorch state_dict {}",
                    pth.display()
                )),
                ..RecordMeta::default()
            };
            model::save_model(&net, out, &meta)
                .with_context(|| format!("cannot write {}", out.display()))?;
            writeln!(
                std::io::stdout(),
                "wrote {} ({PARAMETER_COUNT} parameters) from {}",
                out.display(),
                pth.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Calibrate { data, images, out } => calibrate(cli, data, *images, out),
        Command::Info => {
            let (_, meta, source) = load(cli, &device)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "architecture  {}", model::net::summary())?;
            writeln!(
                out,
                "input         {s}×{s} RGB, normalised to [-1, 1]",
                s = model::INPUT_SIZE
            )?;
            writeln!(out, "parameters    {PARAMETER_COUNT}")?;
            writeln!(out, "classes       {}", CLASSES.join(", "))?;
            writeln!(
                out,
                "record        {source} (format v{})",
                meta.format_version
            )?;
            if let Some(a) = meta.test_accuracy {
                writeln!(out, "test accuracy {:.2}%", a * 100.0)?;
            }
            if let Some(q) = &meta.int8 {
                let accuracy = q.test_accuracy.map_or(String::new(), |a| {
                    format!(", test accuracy {:.2}%", a * 100.0)
                });
                writeln!(
                    out,
                    "int8          calibrated on {} images{accuracy}",
                    q.images
                )?;
            }
            if let Some(c) = &meta.created {
                writeln!(out, "trained       {c}")?;
            }
            if let Some(r) = &meta.recipe {
                writeln!(out, "recipe        {r}")?;
            }
            let backends: Vec<_> = Backend::available().iter().map(|b| b.name()).collect();
            writeln!(
                out,
                "backends      {} (using {})",
                backends.join(", "),
                cli.backend
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Classify {
            paths,
            top_k,
            json,
            jsonl,
            batch_size,
            tta: TtaArg { tta },
        } => {
            let (net, meta, _) = load(cli, &device)?;
            let net = Inference::new(net, cli.backend)?
                .with_precision(cli.precision, meta.int8.as_ref())?
                .with_tta(*tta);
            classify(&net, paths, *top_k, *json, *jsonl, *batch_size)
        }
        Command::Explain {
            paths,
            method,
            target,
            steps,
            out,
            json,
            jsonl,
        } => {
            let (net, meta, _) = load(cli, &device)?;
            let explainer = model::explain::Explainer::new(&net)?;
            let net = Inference::new(net, cli.backend)?
                .with_precision(cli.precision, meta.int8.as_ref())?;
            let mut files = Vec::new();
            collect(paths, &mut files).context("cannot list input files")?;
            let request = explain::Request {
                method: *method,
                target: *target,
                steps: (*steps).max(1),
                out,
                json: *json,
                jsonl: *jsonl,
            };
            explain::run(&net, &explainer, &files, &request)
        }
        Command::Eval {
            data,
            json,
            batch_size,
            tta: TtaArg { tta },
        } => {
            let (net, meta, source) = load(cli, &device)?;
            let net = Inference::new(net, cli.backend)?
                .with_precision(cli.precision, meta.int8.as_ref())?
                .with_tta(*tta);
            let split = dataset::labelled_set(data, OnCorrupt::Skip)?;
            // A progress bar on a terminal only: scripts and logs get just the result.
            let bar = if std::io::stderr().is_terminal() {
                indicatif::ProgressBar::new(split.samples.len() as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} images  {per_sec}  eta {eta}",
                )
                .expect("valid template"),
            );
            let e = evaluate(&net, &split.samples, *batch_size, |done| {
                bar.set_position(done as u64);
            });
            bar.finish_and_clear();
            let mut out = std::io::stdout().lock();
            if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "record": source, "recorded_accuracy": meta.test_accuracy,
                        "tta": tta.name(), "precision": net.precision().name(),
                        "skipped": split.skipped, "evaluation": e,
                    }))?
                )?;
            } else {
                writeln!(
                    out,
                    "{} images ({} skipped) with {source}{}",
                    e.images,
                    split.skipped.len(),
                    match tta {
                        Tta::Off => "",
                        Tta::Flip => ", test-time augmentation (mirror)",
                        Tta::Crops => ", test-time augmentation (mirror and shifted crops)",
                    }
                )?;
                writeln!(
                    out,
                    "top-1 accuracy {:.2}%   top-3 accuracy {:.2}%",
                    e.accuracy * 100.0,
                    e.top3_accuracy * 100.0
                )?;
                writeln!(out, "\nper class:")?;
                for (class, acc) in &e.per_class {
                    writeln!(
                        out,
                        "  {class:<11} {}",
                        acc.map_or("-".into(), |a| format!("{:.2}%", a * 100.0))
                    )?;
                }
                writeln!(out, "\nconfusion matrix (rows: truth, columns: predicted):")?;
                write!(out, "{:>11}", "")?;
                for c in CLASSES {
                    write!(out, " {:>6}", &c[..c.len().min(6)])?;
                }
                writeln!(out)?;
                for (i, row) in e.confusion.iter().enumerate() {
                    write!(out, "{:>11}", CLASSES[i])?;
                    for n in row {
                        write!(out, " {n:>6}")?;
                    }
                    writeln!(out)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cnn calibrate`: ranges on training images, both precisions scored on the test split, the
/// record written with the ranges.
fn calibrate(
    cli: &Cli,
    data: &std::path::Path,
    images: usize,
    out: &std::path::Path,
) -> Result<ExitCode> {
    // The ranges are the fast path's, so the record is read for it whatever `--backend` says.
    let (net, mut meta, source) = load(cli, &Backend::Fast.device())?;
    let layout = dataset::detect(data)?;
    let train = layout.train(OnCorrupt::Skip)?;
    let test = layout.test(OnCorrupt::Skip)?;
    anyhow::ensure!(
        images > 0 && !train.samples.is_empty() && !test.samples.is_empty(),
        "calibration needs training images and test images under {}",
        data.display()
    );
    let chosen = model::quantize::spread(&train.samples, images);
    let mut calibration = model::quantize::calibrate(&net, &chosen)?;
    let fp32 = Inference::new(net.clone(), Backend::Fast)?;
    let int8 = Inference::new(net.clone(), Backend::Fast)?
        .with_precision(Precision::Int8, Some(&calibration))?;
    // One pass over the test set for both precisions (their accuracies and agreement).
    let (e32, e8, agreement) = model::eval::compare(&fp32, &int8, &test.samples, 256);
    calibration.test_accuracy = Some(e8.accuracy);
    meta.int8 = Some(calibration);
    model::save_model(&net, out, &meta)
        .with_context(|| format!("cannot write {}", out.display()))?;
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&json!({
            "record": source, "written": out.display().to_string(), "calibration": calibration,
            "test_images": e8.images,
            "fp32": {"accuracy": e32.accuracy, "top3_accuracy": e32.top3_accuracy},
            "int8": {"accuracy": e8.accuracy, "top3_accuracy": e8.top3_accuracy},
            "top1_agreement": agreement,
        }))?
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `--tta`, shared by `classify` and `eval`.
#[derive(clap::Args, Debug)]
struct TtaArg {
    /// Test-time augmentation: `flip` (or `--tta` alone) averages each image's class
    /// probabilities with its horizontal mirror's (twice the compute); `--tta=crops` also with
    /// both shifted 4 px left, right, up and down (ten times).
    #[arg(
        long,
        value_name = "off|flip|crops",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "flip",
        default_value = "off"
    )]
    tta: Tta,
}

mod explain;
mod remote;
mod report;

use report::Report;

/// Files named on the command line, directories walked (sorted, so output is stable).
fn collect(paths: &[PathBuf], out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            collect(&entries, out)?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(())
}

fn classify(
    net: &Inference,
    paths: &[PathBuf],
    top_k: usize,
    json: bool,
    jsonl: bool,
    batch_size: usize,
) -> Result<ExitCode> {
    let mut files = Vec::new();
    collect(paths, &mut files).context("cannot list input files")?;
    let pre = Preprocessor::default();
    let mut report = Report::new(std::io::stdout().lock(), json, jsonl);
    for chunk in files.chunks(batch_size.max(1)) {
        let prepared = chunk.iter().map(|p| {
            let r = std::fs::read(p)
                .map_err(|e| e.to_string())
                .and_then(|b| pre.preprocess(&b).map_err(|e| e.to_string()));
            (p.as_path(), r)
        });
        for (path, r) in net.predict_each(prepared, top_k) {
            report.push(match r {
                Ok(p) => json!({"file": path, "prediction": p.best, "top_k": p.top_k}),
                Err(e) => json!({"file": path, "error": e}),
            })?;
        }
    }
    Ok(report.finish()?)
}
