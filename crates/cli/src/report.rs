//! Per-file results as a table, one JSON document or JSON lines: shared by `classify` and
//! `remote`, so both print the same thing for the same answers.

use std::io::{self, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

/// Collects and prints results; a result with an `error` key counts as failed.
pub struct Report<W: Write> {
    out: W,
    json: bool,
    jsonl: bool,
    results: Vec<Value>,
    failed: usize,
    /// What the summary line says of the files that did not fail.
    done: &'static str,
}

impl<W: Write> Report<W> {
    pub fn new(out: W, json: bool, jsonl: bool) -> Self {
        Self {
            out,
            json,
            jsonl,
            results: Vec::new(),
            failed: 0,
            done: "classified",
        }
    }

    /// The summary line's word for the files that did not fail (`classified` by default).
    pub fn saying(mut self, done: &'static str) -> Self {
        self.done = done;
        self
    }

    /// Records one file's result, printing it at once unless the output is one document.
    pub fn push(&mut self, value: Value) -> io::Result<()> {
        self.failed += usize::from(value.get("error").is_some());
        if self.jsonl {
            writeln!(self.out, "{value}")?;
        } else if !self.json {
            print_row(&mut self.out, &value)?;
        }
        self.results.push(value);
        Ok(())
    }

    /// Prints the document or the summary line; exit code 1 when any file failed.
    pub fn finish(mut self) -> io::Result<ExitCode> {
        let total = self.results.len();
        if self.json {
            let doc = json!({"results": self.results, "total": total, "failed": self.failed});
            writeln!(self.out, "{}", serde_json::to_string_pretty(&doc)?)?;
        } else if !self.jsonl {
            writeln!(
                self.out,
                "{total} files, {} {}, {} failed",
                total - self.failed,
                self.done,
                self.failed
            )?;
        }
        Ok(if self.failed > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn print_row(out: &mut impl Write, v: &Value) -> io::Result<()> {
    let file = v["file"].as_str().unwrap_or("?");
    match v.get("error") {
        Some(e) => writeln!(out, "{file}\terror: {}", e.as_str().unwrap_or("?")),
        None => {
            let ranked: Vec<String> = v["top_k"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{} {:.1}%",
                        r["class"].as_str().unwrap_or("?"),
                        r["confidence"].as_f64().unwrap_or(0.0) * 100.0
                    )
                })
                .collect();
            match v["written"].as_str() {
                // `cnn explain`: the picture drawn for it.
                Some(written) => writeln!(out, "{file}\t{}\t-> {written}", ranked.join("  ")),
                None => writeln!(out, "{file}\t{}", ranked.join("  ")),
            }
        }
    }
}
