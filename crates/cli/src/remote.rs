//! `cnn remote`: the same output as `cnn classify`, computed by a running server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use model::Gathered;
use serde_json::{Value, json};

/// Files per batch when the server does not say (its own default `--max-files`).
const DEFAULT_MAX_FILES: usize = 64;

/// The multipart body of `files` under `field`. Quotes and line breaks would end a part's
/// header early: they are replaced in the names (the server echoes the name only).
fn multipart(field: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let names: Vec<String> = files
        .iter()
        .map(|(name, _)| {
            name.chars()
                .map(|c| if c == '"' || c.is_control() { '_' } else { c })
                .collect()
        })
        .collect();
    let parts: Vec<(&str, &str, &[u8])> = names
        .iter()
        .zip(files)
        .map(|(name, (_, bytes))| (field, name.as_str(), bytes.as_slice()))
        .collect();
    model::multipart::multipart(&parts)
}

/// A running server, reached over HTTP.
struct Server {
    base: String,
    agent: ureq::Agent,
}

impl Server {
    fn new(url: &str) -> Self {
        Self {
            base: url.trim_end_matches('/').to_string(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(120)))
                .build()
                .into(),
        }
    }

    /// The most files the server takes in one batch: the `maxItems` its OpenAPI document
    /// states (its `--max-files`), or its default when the document does not say.
    fn max_files(&self) -> usize {
        self.agent
            .get(format!("{}/openapi.json", self.base))
            .call()
            .ok()
            .filter(|res| res.status() == 200)
            .and_then(|mut res| res.body_mut().read_to_string().ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|doc| {
                doc["components"]["schemas"]["BatchForm"]["properties"]["files"]["maxItems"]
                    .as_u64()
            })
            .map_or(DEFAULT_MAX_FILES, |n| (n as usize).max(1))
    }

    /// Posts `files` (one to `/classify`, several to `/classify/batch`) and returns one answer
    /// per file, in order; fails on any answer that does not account for every file sent.
    fn classify(&self, files: &[(String, Vec<u8>)]) -> Result<Vec<Value>> {
        let (endpoint, field) = if files.len() == 1 {
            ("classify", "file")
        } else {
            ("classify/batch", "files")
        };
        let mut res = self
            .agent
            .post(format!("{}/{endpoint}", self.base))
            .header("Content-Type", model::multipart::content_type())
            .send(&multipart(field, files)[..])
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .read_to_string()
            .context("reading the server's answer")?;
        let body: Value = serde_json::from_str(&text).with_context(|| {
            format!("the server answered {status} with something that is not JSON")
        })?;
        if status != 200 {
            bail!(
                "the server answered {status}: {}",
                body["detail"].as_str().unwrap_or(&text)
            );
        }
        let answers = if files.len() == 1 {
            vec![body]
        } else {
            match body["results"].as_array() {
                Some(results) => results.clone(),
                None => bail!("the server's answer has no \"results\" list: {text}"),
            }
        };
        if answers.len() != files.len() {
            bail!(
                "sent {} files but the server answered for {}",
                files.len(),
                answers.len()
            );
        }
        for ((name, _), a) in files.iter().zip(&answers) {
            if a.get("error").is_none()
                && (!a["prediction"].is_object() || !a["top_3_predictions"].is_array())
            {
                bail!("the server's answer for {name} has neither a prediction nor an error: {a}");
            }
        }
        Ok(answers)
    }
}

/// Sends the files named in `paths` (directories walked, as `cnn classify` does) to `url` in
/// batches the server accepts, and prints one row (or JSON value) per file.
pub fn classify(url: &str, paths: &[PathBuf], json_out: bool, jsonl: bool) -> Result<ExitCode> {
    let mut files = Vec::new();
    crate::collect(paths, &mut files).context("cannot list input files")?;
    let server = Server::new(url);
    let max_files = server.max_files();
    let mut report = crate::Report::new(std::io::stdout().lock(), json_out, jsonl);
    for chunk in files.chunks(max_files) {
        // A file that cannot be read is reported in its place, as `cnn classify` does.
        let (gathered, readable) = Gathered::split(chunk.iter().map(|path| {
            let name = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|e| e.to_string());
            (name.clone(), bytes.map(|b| (name, b)))
        }));
        let answers = if readable.is_empty() {
            Vec::new()
        } else {
            server.classify(&readable)?
        };
        for (name, r) in gathered.answer(answers) {
            report.push(match r {
                Err(e) => json!({"file": name, "error": e}),
                Ok(a) => match a.get("error") {
                    Some(e) => json!({"file": name, "error": e}),
                    None => {
                        json!({"file": name, "prediction": a["prediction"], "top_k": a["top_3_predictions"]})
                    }
                },
            })?;
        }
    }
    Ok(report.finish()?)
}
