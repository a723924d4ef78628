//! Fetching CIFAR-10 when `--data` is not given, against a real HTTP server that each test
//! starts on 127.0.0.1. It serves archives in the official release's format, written here from
//! real CIFAR-10 images (the shared JPEG archive, see `model::testdata`); nothing leaves the
//! machine.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use md5::Digest;
use model::dataset::{self, OnCorrupt, Sample, to_binary};
use model::{CLASSES, Preprocessor, testdata};
use train::download::{
    self, Checksum, DownloadOptions, FetchError, download_into, locate_or_download,
};

/// The path the official file is served at, so the archive keeps its official name.
const OFFICIAL: &str = "/cifar-10-binary.tar.gz";
const TEST_IMAGES: usize = 50;

// ---------------------------------------------------------------------------------------------
// Archives in the official layout
// ---------------------------------------------------------------------------------------------

/// The files of the official release, holding real images: 200 training records in five
/// batches, 50 test records, and the class names.
fn official_files() -> &'static [(String, Vec<u8>)] {
    static FILES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let pre = Preprocessor::default();
        let samples = |split: &str, per_class: usize| -> Vec<Sample> {
            testdata::images(split, per_class)
                .iter()
                .map(|i| Sample {
                    image: pre.decode(&i.bytes).unwrap(),
                    label: CLASSES.iter().position(|c| *c == i.class).unwrap() as u8,
                })
                .collect()
        };
        let train = samples("train", 20);
        let test = samples("test", TEST_IMAGES / CLASSES.len());
        assert_eq!(
            test.len(),
            TEST_IMAGES,
            "the shared archive holds too few test images"
        );
        let dir = "cifar-10-batches-bin";
        let mut files = vec![(
            format!("{dir}/batches.meta.txt"),
            format!("{}\n", CLASSES.join("\n")).into_bytes(),
        )];
        for (k, chunk) in train.chunks(train.len().div_ceil(5)).enumerate() {
            files.push((format!("{dir}/data_batch_{}.bin", k + 1), to_binary(chunk)));
        }
        files.push((format!("{dir}/test_batch.bin"), to_binary(&test)));
        files
    })
}

fn official_archive() -> &'static [u8] {
    static ARCHIVE: OnceLock<Vec<u8>> = OnceLock::new();
    ARCHIVE.get_or_init(|| tar_gz(official_files(), |_| {}))
}

type TarGz = tar::Builder<GzEncoder<Vec<u8>>>;

/// A `.tar.gz` of the top folder and `files`, then whatever `extra` appends.
fn tar_gz(files: &[(String, Vec<u8>)], extra: impl FnOnce(&mut TarGz)) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "cifar-10-batches-bin/", std::io::empty())
        .unwrap();
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder
            .append_data(&mut header, path, data.as_slice())
            .unwrap();
    }
    extra(&mut builder);
    builder.into_inner().unwrap().finish().unwrap()
}

/// Appends an entry exactly as named: the `tar` crate's own setters refuse `..`, which is
/// precisely what a hostile archive holds.
fn append_raw(builder: &mut TarGz, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn md5_of(bytes: &[u8]) -> Checksum {
    format!("{:x}", md5::Md5::digest(bytes)).parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server
// ---------------------------------------------------------------------------------------------

/// How the server answers one path.
#[derive(Clone)]
struct Route {
    body: Arc<Vec<u8>>,
    /// Close the connection after this many body bytes, on the first request only.
    cut_first_after: Option<usize>,
    /// Answer 200 with everything even when asked for a range, as some servers do.
    ignore_range: bool,
}

impl Route {
    fn new(body: &[u8]) -> Self {
        Route {
            body: Arc::new(body.to_vec()),
            cut_first_after: None,
            ignore_range: false,
        }
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct Server {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: HashMap<String, Route> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let routes = Arc::new(Mutex::new(routes));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        // Lives until the test process ends; every connection gets its own thread.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (routes, log) = (Arc::clone(&routes), Arc::clone(&log));
                std::thread::spawn(move || {
                    let _ = answer(stream, &routes, &log);
                });
            }
        });
        Server { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves one request (`Connection: close` keeps it to one per connection): the body or the
/// asked `bytes=N-` range of it, 416 past its end, 404 for unknown paths.
fn answer(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });

    let (route, cut) = match routes.lock().unwrap().get_mut(&path) {
        Some(route) => (Some(route.clone()), route.cut_first_after.take()),
        None => (None, None),
    };
    let mut out = stream;
    let Some(route) = route else {
        out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        )?;
        return Ok(());
    };
    let body = route.body.as_slice();
    let len = body.len();
    let start = range.filter(|_| !route.ignore_range).and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    });
    let (status, content_range, sent) = match start {
        Some(s) if s >= len => (
            "416 Range Not Satisfiable",
            format!("Content-Range: bytes */{len}\r\n"),
            &body[..0],
        ),
        Some(s) => (
            "206 Partial Content",
            format!("Content-Range: bytes {s}-{}/{len}\r\n", len - 1),
            &body[s..],
        ),
        None => ("200 OK", String::new(), body),
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\n{content_range}Content-Length: {}\r\n\
         Content-Type: application/gzip\r\nConnection: close\r\n\r\n",
        sent.len()
    )?;
    match cut {
        Some(n) if n < sent.len() => {
            out.write_all(&sent[..n])?;
            out.flush()?;
            out.shutdown(Shutdown::Both)?;
        }
        _ => out.write_all(sent)?,
    }
    Ok(())
}

/// An address nothing listens on: connecting is refused at once, as when offline.
fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}{OFFICIAL}")
}

fn opts(url: String, checksum: Checksum, dest: &Path) -> DownloadOptions {
    DownloadOptions {
        dest: dest.to_path_buf(),
        connect_timeout: Duration::from_secs(2),
        retries: 0,
        progress: false,
        ..DownloadOptions::new(url, checksum)
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn assert_unpacked(dest: &Path) {
    assert_eq!(
        names_in(dest),
        ["cifar-10-batches-bin"],
        "archive or .part left behind"
    );
    let layout = dataset::detect(dest).unwrap();
    assert!(
        matches!(layout, dataset::Layout::Binary { .. }),
        "{layout:?}"
    );
    assert_eq!(
        layout.test(OnCorrupt::Fail).unwrap().samples.len(),
        TEST_IMAGES
    );
    assert_eq!(layout.train(OnCorrupt::Fail).unwrap().samples.len(), 200);
}

fn assert_nothing_unpacked(dest: &Path) {
    let names = names_in(dest);
    assert!(
        names
            .iter()
            .all(|n| n != "cifar-10-batches-bin" && !n.starts_with(".unpack-")),
        "{names:?}"
    );
    assert!(dataset::detect(dest).is_err());
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn without_data_train_downloads_verifies_unpacks_then_trains() {
    let archive = official_archive();
    let server = Server::start(vec![(OFFICIAL, Route::new(archive))]);
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let url = server.url(OFFICIAL);
    let checksum = md5_of(archive).to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(work)
        .env_remove("CIFAR10_DATA")
        .args([
            "--plain",
            "--download-url",
            url.as_str(),
            "--download-checksum",
            checksum.as_str(),
            "--out",
            "run",
            "--epochs",
            "1",
            "--batch-size",
            "25",
            "--valid-fraction",
            "0.1",
            "--warmup-epochs",
            "0",
        ])
        .output()
        .unwrap();
    let log = text(&out);
    assert!(out.status.success(), "train failed:\n{log}");
    assert!(
        log.contains("downloaded") && log.contains("Binary"),
        "{log}"
    );
    let data = work.join("data");
    assert_unpacked(&data);
    let test: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(work.join("run/test.json")).unwrap()).unwrap();
    assert_eq!(test["evaluation"]["images"], TEST_IMAGES);
    assert!(work.join("run/model.safetensors").is_file());
    assert_eq!(server.seen().len(), 1);

    // The next run finds ./data and asks the server for nothing.
    let again = locate_or_download(
        None,
        None,
        &opts(server.url(OFFICIAL), md5_of(archive), &data),
    )
    .unwrap();
    assert_eq!(again, data);
    assert_eq!(server.seen().len(), 1);
}

#[test]
fn data_then_cifar10_data_then_local_data_come_before_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let write_layout = |dir: &Path| {
        let bin = dir.join("cifar-10-batches-bin");
        fs::create_dir_all(&bin).unwrap();
        let sample = Sample {
            image: image::RgbImage::new(32, 32),
            label: 0,
        };
        fs::write(bin.join("test_batch.bin"), to_binary(&[sample])).unwrap();
    };
    let env_dir = work.join("env");
    let local = work.join("data");
    // Nothing listens at the URL: any download attempt would fail the test.
    let o = opts(closed_url(), Checksum::official(), &local);

    let explicit = work.join("explicit-and-empty");
    assert_eq!(
        locate_or_download(Some(explicit.as_path()), Some(env_dir.as_path()), &o).unwrap(),
        explicit,
        "--data is used as given; the loader reports what is wrong with it"
    );
    write_layout(&env_dir);
    write_layout(&local);
    assert_eq!(
        locate_or_download(None, Some(env_dir.as_path()), &o).unwrap(),
        env_dir
    );
    assert_eq!(
        locate_or_download(None, Some(work.join("empty").as_path()), &o).unwrap(),
        local,
        "a CIFAR10_DATA without data falls through to ./data"
    );
    assert_eq!(locate_or_download(None, None, &o).unwrap(), local);

    // The image-folder layout counts as data too.
    let folders = work.join("folders");
    testdata::write_folders(
        &folders.join("cifar10"),
        &[testdata::images("train", 1), testdata::images("test", 1)].concat(),
    );
    assert_eq!(
        locate_or_download(None, Some(folders.as_path()), &o).unwrap(),
        folders
    );
}

#[test]
fn a_checksum_mismatch_deletes_the_file_and_unpacks_nothing() {
    let server = Server::start(vec![(OFFICIAL, Route::new(official_archive()))]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("data");
    let err = locate_or_download(
        None,
        None,
        &opts(server.url(OFFICIAL), md5_of(b"some other file"), &dest),
    )
    .unwrap_err();
    assert!(matches!(*err.cause, FetchError::Checksum { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("--download-checksum") && message.contains("was deleted"),
        "{message}"
    );
    assert!(names_in(&dest).is_empty(), "{:?}", names_in(&dest));
}

#[test]
fn sha256_checksums_are_accepted() {
    let archive = official_archive();
    let server = Server::start(vec![(OFFICIAL, Route::new(archive))]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("data");
    let hex = format!("{:x}", sha2::Sha256::digest(archive));
    let checksum: Checksum = format!("sha256:{hex}").parse().unwrap();
    download_into(&opts(server.url(OFFICIAL), checksum, &dest)).unwrap();
    assert_unpacked(&dest);
}

#[test]
fn a_download_cut_half_way_resumes_with_a_range_request() {
    let archive = official_archive();
    let half = archive.len() / 2;
    let server = Server::start(vec![(
        OFFICIAL,
        Route {
            cut_first_after: Some(half),
            ..Route::new(archive)
        },
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("data");
    let o = opts(server.url(OFFICIAL), md5_of(archive), &dest);

    let err = locate_or_download(None, None, &o).unwrap_err();
    assert!(
        matches!(*err.cause, FetchError::Interrupted { got, .. } if got == half as u64),
        "{err}"
    );
    assert!(
        err.to_string().contains("run the same command again"),
        "{err}"
    );
    let part = dest.join("cifar-10-binary.tar.gz.part");
    assert_eq!(fs::metadata(&part).unwrap().len(), half as u64);
    assert_nothing_unpacked(&dest);

    assert_eq!(locate_or_download(None, None, &o).unwrap(), dest);
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].path, OFFICIAL);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
    assert_unpacked(&dest);
}

#[test]
fn retries_resume_a_cut_download_within_one_call() {
    let archive = official_archive();
    let third = archive.len() / 3;
    let server = Server::start(vec![(
        OFFICIAL,
        Route {
            cut_first_after: Some(third),
            ..Route::new(archive)
        },
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("data");
    let o = DownloadOptions {
        retries: 1,
        ..opts(server.url(OFFICIAL), md5_of(archive), &dest)
    };
    download_into(&o).unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={third}-").as_str())
    );
    assert_unpacked(&dest);
}

#[test]
fn a_server_that_ignores_range_makes_the_download_start_over() {
    let archive = official_archive();
    let server = Server::start(vec![(
        OFFICIAL,
        Route {
            ignore_range: true,
            ..Route::new(archive)
        },
    )]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("data");
    fs::create_dir_all(&dest).unwrap();
    // Bytes that are not the archive's start: appending to them would fail the checksum.
    fs::write(dest.join("cifar-10-binary.tar.gz.part"), vec![0xABu8; 1000]).unwrap();
    download_into(&opts(server.url(OFFICIAL), md5_of(archive), &dest)).unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=1000-"));
    assert_unpacked(&dest);
}

#[test]
fn range_not_satisfiable_completes_a_whole_part_and_restarts_a_foreign_one() {
    let archive = official_archive();
    let server = Server::start(vec![(OFFICIAL, Route::new(archive))]);
    let o = |dest: &Path| opts(server.url(OFFICIAL), md5_of(archive), dest);

    // Killed between the last byte and the rename: the part is already whole.
    let whole_tmp = tempfile::tempdir().unwrap();
    let whole = whole_tmp.path().join("data");
    fs::create_dir_all(&whole).unwrap();
    fs::write(whole.join("cifar-10-binary.tar.gz.part"), archive).unwrap();
    download_into(&o(&whole)).unwrap();
    assert_unpacked(&whole);
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].range.as_deref(),
        Some(format!("bytes={}-", archive.len()).as_str())
    );

    // A longer part belongs to some other file: start from zero.
    let foreign_tmp = tempfile::tempdir().unwrap();
    let foreign = foreign_tmp.path().join("data");
    fs::create_dir_all(&foreign).unwrap();
    fs::write(
        foreign.join("cifar-10-binary.tar.gz.part"),
        vec![7u8; archive.len() + 10],
    )
    .unwrap();
    download_into(&o(&foreign)).unwrap();
    assert_unpacked(&foreign);
    let seen = server.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[2].range, None);
}

#[test]
fn a_missing_file_is_reported_with_what_to_do() {
    let server = Server::start(vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("data");
    let err = locate_or_download(
        None,
        None,
        &opts(server.url("/no/such.tar.gz"), Checksum::official(), &dest),
    )
    .unwrap_err();
    assert!(
        matches!(*err.cause, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    let message = err.to_string();
    for needle in [
        "404",
        "/no/such.tar.gz",
        "--download-url",
        "--data",
        "looked in",
    ] {
        assert!(
            message.contains(needle),
            "{needle} missing from:\n{message}"
        );
    }
    assert!(
        !dest.exists(),
        "nothing written for a file that is not there"
    );
}

#[test]
fn archives_that_could_write_outside_the_folder_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let work_root = tmp.path();
    for (i, (name, kind, link)) in [
        ("../escaped.txt", tar::EntryType::Regular, ""),
        (
            "cifar-10-batches-bin/../../escaped.txt",
            tar::EntryType::Regular,
            "",
        ),
        ("ABSOLUTE", tar::EntryType::Regular, ""),
        (
            "cifar-10-batches-bin/link",
            tar::EntryType::Symlink,
            "/etc/passwd",
        ),
        (
            "cifar-10-batches-bin/hard",
            tar::EntryType::Link,
            "cifar-10-batches-bin/test_batch.bin",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let work = work_root.join(i.to_string());
        let dest = work.join("data");
        let absolute = work.join("escaped-absolute.txt");
        let absolute_name = absolute.to_str().unwrap();
        let name = if name == "ABSOLUTE" {
            absolute_name
        } else {
            name
        };
        // The hostile entry comes last, after good ones were already written.
        let data: &[u8] = if link.is_empty() { b"escaped" } else { b"" };
        let bytes = tar_gz(official_files(), |b| append_raw(b, name, kind, link, data));
        let server = Server::start(vec![(OFFICIAL, Route::new(&bytes))]);
        let err = locate_or_download(
            None,
            None,
            &opts(server.url(OFFICIAL), md5_of(&bytes), &dest),
        )
        .unwrap_err();
        assert!(
            matches!(*err.cause, FetchError::UnsafeEntry { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        assert!(!work.join("escaped.txt").exists(), "{name} escaped");
        assert!(!work_root.join("escaped.txt").exists(), "{name} escaped");
        assert!(!absolute.exists(), "{name} escaped");
        assert_nothing_unpacked(&dest);
        assert!(
            names_in(&dest).is_empty(),
            "the refused archive is not kept: {:?}",
            names_in(&dest)
        );
    }
}

#[test]
fn offline_train_fails_within_seconds_and_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let url = closed_url();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(work)
        .env_remove("CIFAR10_DATA")
        .args(["--plain", "--download-url", url.as_str(), "--epochs", "1"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        url.as_str(),
        "looked in",
        "CIFAR10_DATA (not set)",
        "--data",
        "--download-url",
        "--download-checksum",
    ] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    assert!(
        !work.join("runs").exists(),
        "no run folder for a run without data"
    );
    assert!(
        !work.join("data").exists(),
        "no empty data folder left behind"
    );
}

#[test]
fn help_shows_the_download_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_train"))
        .arg("--help")
        .output()
        .unwrap();
    let help = text(&out);
    assert!(out.status.success(), "{help}");
    assert!(help.contains(download::DEFAULT_URL), "{help}");
    assert!(help.contains(download::DEFAULT_CHECKSUM), "{help}");
}
