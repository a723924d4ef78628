//! Finding CIFAR-10 when `--data` is not given, and fetching the official release when it is
//! nowhere on disk.
//!
//! The search order is `--data`, then `$CIFAR10_DATA`, then `./data`, each in either layout
//! [`model::dataset::detect`] accepts. When none holds the data set, the official binary
//! release is downloaded into `./data`: the transfer goes to a `.part` file that a later run
//! resumes with an HTTP `Range` request, the finished file is checked against a published
//! checksum before anything is unpacked, and unpacking refuses any entry that could write
//! outside the target folder. Connecting gives up after a few seconds, so a machine without a
//! network fails fast with advice instead of hanging.

use std::borrow::Borrow;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use model::dataset;
use sha2::Digest;
use thiserror::Error;

/// The official CIFAR-10 binary release.
pub const DEFAULT_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The MD5 the CIFAR-10 page publishes for [`DEFAULT_URL`].
pub const DEFAULT_CHECKSUM: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Where the data set is looked for, and downloaded to, when nothing else holds it.
pub const DEFAULT_DEST: &str = "data";

/// File name used when the URL does not end in a usable one.
const FALLBACK_NAME: &str = "cifar-10-binary.tar.gz";
/// Prefix of the staging folders unpacking writes into before moving the result in place.
const STAGING_PREFIX: &str = ".unpack-";
/// CIFAR-10 unpacks to about 180 MB; far more means a hostile or wrong archive.
const MAX_UNPACKED: u64 = 2 << 30;
/// How long to wait for the response head once connected: the official server answers in
/// well under a second, and a silent one should not hold the run up for minutes.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A body that delivers nothing for this long is treated as cut, so the retry can resume it.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Which hash a [`Checksum`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5: what the CIFAR-10 page publishes. Enough to catch a damaged or wrong file, not a
    /// forged one.
    Md5,
    /// SHA-256, for mirrors that publish one.
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }
}

/// The expected digest of the downloaded archive: `md5:<hex>`, `sha256:<hex>`, or bare hex
/// (32 digits for MD5, which is what the CIFAR-10 page publishes, 64 for SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The hash the digits are of.
    pub algorithm: Algorithm,
    /// Lower-case hex digits.
    pub hex: String,
}

impl FromStr for Checksum {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (algorithm, hex) = match s.split_once(':') {
            Some((name, hex)) => match name.to_ascii_lowercase().as_str() {
                "md5" => (Algorithm::Md5, hex),
                "sha256" => (Algorithm::Sha256, hex),
                other => {
                    return Err(format!(
                        "unknown checksum algorithm '{other}': use md5:<hex> or sha256:<hex>"
                    ));
                }
            },
            None if s.len() == Algorithm::Md5.hex_len() => (Algorithm::Md5, s),
            None if s.len() == Algorithm::Sha256.hex_len() => (Algorithm::Sha256, s),
            None => {
                return Err(format!(
                    "'{s}' is neither 32 hex digits (MD5) nor 64 (SHA-256); \
                     write md5:<hex> or sha256:<hex>"
                ));
            }
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a {} checksum is {} hex digits, got '{hex}'",
                algorithm.name(),
                algorithm.hex_len()
            ));
        }
        Ok(Checksum {
            algorithm,
            hex: hex.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl Checksum {
    /// The official release's published MD5.
    pub fn official() -> Self {
        DEFAULT_CHECKSUM
            .parse()
            .expect("the built-in checksum is valid")
    }

    /// This checksum's algorithm applied to everything `reader` yields, as lower-case hex.
    pub fn digest(&self, reader: impl Read) -> io::Result<String> {
        match self.algorithm {
            Algorithm::Md5 => hex_digest(md5::Md5::new(), reader),
            Algorithm::Sha256 => hex_digest(sha2::Sha256::new(), reader),
        }
    }
}

/// The digest of everything `reader` yields, as lower-case hex (as checksums are published).
fn hex_digest<D: Digest + Write>(mut hasher: D, mut reader: impl Read) -> io::Result<String> {
    use std::fmt::Write as _;
    io::copy(&mut reader, &mut hasher)?;
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(2 * digest.len());
    for b in digest {
        write!(hex, "{b:02x}").expect("writing to a String cannot fail");
    }
    Ok(hex)
}

/// How to fetch the data set when it is not on disk.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Where the archive is fetched from (the official release unless `--download-url`).
    pub url: String,
    /// What the finished archive must hash to before anything is unpacked.
    pub checksum: Checksum,
    /// Folder the archive is downloaded to and unpacked in (`./data`).
    pub dest: PathBuf,
    /// Limit for name resolution and for connecting, each: short, so offline fails fast.
    pub connect_timeout: Duration,
    /// How many times a transfer cut part-way is resumed within one call.
    pub retries: u32,
    /// Draw a progress bar on stderr (indicatif hides it anyway when stderr is no terminal).
    pub progress: bool,
}

impl DownloadOptions {
    /// Fetching `url`, checked against `checksum`, into `./data`, with a progress bar, a
    /// 5-second connect limit and 3 resumed retries.
    pub fn new(url: impl Into<String>, checksum: Checksum) -> Self {
        DownloadOptions {
            url: url.into(),
            checksum,
            dest: PathBuf::from(DEFAULT_DEST),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            progress: true,
        }
    }
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions::new(DEFAULT_URL, Checksum::official())
    }
}

/// Why fetching or unpacking the archive failed.
#[derive(Debug, Error)]
pub enum FetchError {
    /// No HTTP answer: name resolution, connecting, TLS or a timeout failed.
    #[error("cannot reach {url}: {source}")]
    Request {
        /// The address asked for.
        url: String,
        /// Boxed: ureq's error is large, and every `Result` here would carry its size.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with an error status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The address asked for.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The server's ranges cannot resume the `.part` file, even after starting from zero.
    #[error("{url} answered with a byte range that does not continue {part}: {reason}")]
    BadRange {
        /// The address asked for.
        url: String,
        /// The partial download that could not be continued.
        part: PathBuf,
        /// How the answer disagreed with the request.
        reason: String,
    },
    #[error(
        "the download was cut off after {got_h} of {total_h} ({source}); {part} keeps what arrived",
        got_h = human(.got),
        total_h = human_total(.total)
    )]
    /// The transfer broke off and the retries ran out; the next run resumes it.
    Interrupted {
        /// Bytes of the archive on disk so far.
        got: u64,
        /// The archive's size, when the server said.
        total: Option<u64>,
        /// The partial download that keeps them.
        part: PathBuf,
        /// The read or write that failed.
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} does not match the expected checksum (expected {expected}, got {actual}); \
         the file was deleted"
    )]
    /// The finished archive hashes to something else: damaged, or another file altogether.
    Checksum {
        /// The archive, already deleted.
        path: PathBuf,
        /// What it should have hashed to.
        expected: Checksum,
        /// What it hashed to, in hex.
        actual: String,
    },
    /// The archive holds an entry that could write outside the target folder (an absolute
    /// path, `..`, a link), a kind of file a data set has no use for, or more bytes than any
    /// CIFAR-10 release unpacks to; nothing was moved into place.
    #[error("refusing to unpack {archive}: entry '{entry}' {reason}")]
    UnsafeEntry {
        /// The archive.
        archive: PathBuf,
        /// The entry's path as stored in the archive.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The archive unpacked cleanly but is not a CIFAR-10 release.
    #[error("{archive} was unpacked but holds no CIFAR-10 data: {source}")]
    NoData {
        /// The archive.
        archive: PathBuf,
        /// Why no layout was found in what it held.
        #[source]
        source: dataset::DataError,
    },
    /// Moving the unpacked data set into place would replace something already there.
    #[error("{path} is in the way of the unpacked data set")]
    Exists {
        /// The existing file or folder.
        path: PathBuf,
    },
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: io::Error,
    },
}

impl FetchError {
    /// What the user can do about this particular failure, beyond the general advice.
    fn advice(&self) -> Option<String> {
        match self {
            FetchError::Request { .. } => Some(
                "check the network connection (a proxy set in HTTPS_PROXY or ALL_PROXY is used)"
                    .to_string(),
            ),
            FetchError::Status { status: 404, .. } => {
                Some("the file is not at that address: check --download-url".to_string())
            }
            FetchError::Interrupted { part, .. } => Some(format!(
                "run the same command again: the download resumes from {}",
                part.display()
            )),
            FetchError::Checksum { .. } => Some(
                "if --download-url points at a mirror, give its archive's checksum with \
                 --download-checksum"
                    .to_string(),
            ),
            FetchError::UnsafeEntry { .. } | FetchError::NoData { .. } => Some(
                "the file is not the CIFAR-10 binary release: point --download-url at it"
                    .to_string(),
            ),
            FetchError::Exists { path } => Some(format!("move {} away", path.display())),
            FetchError::Io { .. } => {
                Some("check that the folder is writable and has about 350 MB free".to_string())
            }
            _ => None,
        }
    }
}

/// Byte counts as people read them (`163.0 MiB`), for messages.
fn human(n: impl Borrow<u64>) -> HumanBytes {
    HumanBytes(*n.borrow())
}

fn human_total(total: impl Borrow<Option<u64>>) -> String {
    total
        .borrow()
        .map_or_else(|| "an unknown size".to_string(), |t| human(t).to_string())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// No data set was found and it could not be downloaded: says where it looked, what it tried
/// and what the user can do instead.
#[derive(Debug)]
pub struct LocateError {
    /// Each place looked in, with why it was passed over.
    pub looked: Vec<String>,
    /// The address the download was tried from.
    pub url: String,
    /// The folder it was to be unpacked in.
    pub dest: PathBuf,
    /// Boxed to keep `Result<PathBuf, LocateError>` small.
    pub cause: Box<FetchError>,
}

impl fmt::Display for LocateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause is part of the message rather than an error source, so that it reads in
        // place between what was tried and what to do, and `anyhow` does not print it twice.
        writeln!(f, "no CIFAR-10 data found, and downloading it failed")?;
        writeln!(f, "  looked in: {}", self.looked.join("; "))?;
        writeln!(
            f,
            "  tried: downloading {} into {}",
            self.url,
            self.dest.display()
        )?;
        writeln!(f, "  failed: {}", self.cause)?;
        if let Some(advice) = self.cause.advice() {
            writeln!(f, "  to go on: {advice}")?;
        }
        write!(
            f,
            "  or: point --data (or CIFAR10_DATA) at a copy of CIFAR-10 (image folders \
             train/<class>/ and test/<class>/, or the binary release cifar-10-batches-bin/), \
             or download it from a mirror with --download-url <URL> \
             --download-checksum <md5 or sha256:HEX>"
        )
    }
}

impl std::error::Error for LocateError {}

/// The data folder to train from: `explicit` (`--data`) as given, else the first of `env_dir`
/// (`$CIFAR10_DATA`) and `opts.dest` (`./data`) that holds CIFAR-10 in a layout the loader
/// accepts, else `opts.dest` after downloading and unpacking the release into it.
///
/// An explicit `--data` is never second-guessed: a wrong one must fail with the loader's own
/// error rather than trigger a 170 MB download.
pub fn locate_or_download(
    explicit: Option<&Path>,
    env_dir: Option<&Path>,
    opts: &DownloadOptions,
) -> Result<PathBuf, LocateError> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let mut looked = Vec::new();
    match env_dir {
        Some(dir) if dataset::detect(dir).is_ok() => {
            println!("using CIFAR-10 in {} (from CIFAR10_DATA)", dir.display());
            return Ok(dir.to_path_buf());
        }
        Some(dir) => {
            tracing::warn!(
                "CIFAR10_DATA={} holds no CIFAR-10 data; trying {}",
                dir.display(),
                opts.dest.display()
            );
            looked.push(format!(
                "CIFAR10_DATA={} (no CIFAR-10 data there)",
                dir.display()
            ));
        }
        None => looked.push("CIFAR10_DATA (not set)".to_string()),
    }
    if dataset::detect(&opts.dest).is_ok() {
        println!("using CIFAR-10 in {}", opts.dest.display());
        return Ok(opts.dest.clone());
    }
    looked.push(format!("{} (no CIFAR-10 data there)", opts.dest.display()));

    download_into(opts).map_err(|cause| LocateError {
        looked,
        url: opts.url.clone(),
        dest: opts.dest.clone(),
        cause: Box::new(cause),
    })?;
    Ok(opts.dest.clone())
}

/// Downloads (or resumes), verifies and unpacks the archive at `opts.url` into `opts.dest`.
///
/// A verified archive left by an earlier run whose unpacking was interrupted is reused without
/// touching the network; the archive is deleted once its contents are in place.
pub fn download_into(opts: &DownloadOptions) -> Result<(), FetchError> {
    let name = archive_name(&opts.url);
    let archive = opts.dest.join(&name);
    let part = opts.dest.join(format!("{name}.part"));

    let reusable = archive.is_file() && verify(&archive, &opts.checksum).is_ok();
    if !reusable {
        // `verify` already removed a bad leftover archive.
        download(opts, &part)?;
        println!(
            "verifying {} ({})",
            part.display(),
            opts.checksum.algorithm.name()
        );
        verify(&part, &opts.checksum)?;
        fs::rename(&part, &archive).map_err(io_at(&archive))?;
    }
    println!(
        "unpacking {} into {}",
        archive.display(),
        opts.dest.display()
    );
    match unpack(&archive, &opts.dest) {
        // The checksum matched, so downloading again would bring the same unusable file:
        // do not keep it around.
        Err(e @ (FetchError::UnsafeEntry { .. } | FetchError::NoData { .. })) => {
            fs::remove_file(&archive).ok();
            Err(e)
        }
        // Anything else (a folder in the way, a full disk) is fixable: keep the verified
        // archive so the next run unpacks it without downloading.
        Err(e) => Err(e),
        Ok(()) => fs::remove_file(&archive).map_err(io_at(&archive)),
    }
}

/// Checks `path` against `expected`, deleting the file when it does not match so the next
/// run downloads it afresh instead of resuming onto bad bytes.
pub fn verify(path: &Path, expected: &Checksum) -> Result<(), FetchError> {
    let file = File::open(path).map_err(io_at(path))?;
    let actual = expected.digest(BufReader::new(file)).map_err(io_at(path))?;
    if actual == expected.hex {
        return Ok(());
    }
    fs::remove_file(path).map_err(io_at(path))?;
    Err(FetchError::Checksum {
        path: path.to_path_buf(),
        expected: expected.clone(),
        actual: format!("{}:{actual}", expected.algorithm.name()),
    })
}

/// The archive's file name: the URL's last path segment when it is a plain file name, so a
/// mirror's `.tar` stays recognisable, otherwise the official name.
fn archive_name(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or("");
    let path = without_query
        .split_once("://")
        .map_or(without_query, |(_, rest)| rest)
        .split_once('/')
        .map_or("", |(_, path)| path);
    let last = path.rsplit('/').next().unwrap_or("");
    let plain = !last.is_empty()
        && !last.starts_with('.')
        && last
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if plain {
        last.to_string()
    } else {
        FALLBACK_NAME.to_string()
    }
}

fn agent(opts: &DownloadOptions) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        // 206, 416 and 404 are answers this code acts on, not transport failures.
        .http_status_as_error(false)
        .timeout_resolve(Some(opts.connect_timeout))
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .user_agent(concat!("cifar-cnn-train/", env!("CARGO_PKG_VERSION")));
    // ureq honours HTTP(S)_PROXY from the environment, but a proxy cannot reach a mirror
    // served from this very machine.
    if is_loopback(&opts.url) {
        config = config.proxy(None);
    }
    config.build().into()
}

/// Whether `url`'s host is this machine (`localhost`, `127.0.0.0/8`, `[::1]`).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What one request achieved.
enum Step {
    /// The `.part` file holds the whole resource.
    Complete,
    /// The server's answer cannot continue the `.part` file: start from byte zero.
    StartOver,
}

/// Brings `part` to the complete resource, resuming whatever it already holds.
fn download(opts: &DownloadOptions, part: &Path) -> Result<(), FetchError> {
    let agent = agent(opts);
    let mut retries_left = opts.retries;
    let mut started_over = false;
    loop {
        match fetch_once(&agent, opts, part) {
            Ok(Step::Complete) => return Ok(()),
            // Once is enough: a server that still cannot be resumed from zero is broken.
            Ok(Step::StartOver) if !started_over => {
                started_over = true;
                remove_if_present(part)?;
            }
            Ok(Step::StartOver) => {
                return Err(FetchError::BadRange {
                    url: opts.url.clone(),
                    part: part.to_path_buf(),
                    reason: "still inconsistent after starting over".to_string(),
                });
            }
            Err(e @ FetchError::Interrupted { .. }) if retries_left > 0 => {
                let attempt = opts.retries - retries_left + 1;
                tracing::warn!("{e}; resuming (retry {attempt} of {})", opts.retries);
                retries_left -= 1;
                std::thread::sleep(Duration::from_millis(500) * attempt);
            }
            Err(e) => return Err(e),
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), FetchError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(path)(e)),
        _ => Ok(()),
    }
}

/// One GET, with `Range` when `part` already holds bytes, appending the body to `part`.
fn fetch_once(
    agent: &ureq::Agent,
    opts: &DownloadOptions,
    part: &Path,
) -> Result<Step, FetchError> {
    let have = fs::metadata(part).map_or(0, |m| m.len());
    // Ask for the bytes as stored: a transfer encoding would make byte offsets meaningless.
    let mut request = agent
        .get(opts.url.as_str())
        .header("Accept-Encoding", "identity");
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|source| FetchError::Request {
        url: opts.url.clone(),
        source: Box::new(source),
    })?;
    let status = response.status().as_u16();
    let range = response
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(ContentRange::parse);
    let length = response.body().content_length();

    let (start, total) = match status {
        200 => {
            if have > 0 {
                println!(
                    "the server does not resume downloads: starting {} over",
                    part.display()
                );
            }
            (0, length)
        }
        206 => match range {
            Some(ContentRange {
                start: Some(start),
                total,
            }) if start == have => (have, total.or(length.map(|l| have + l))),
            _ => return Ok(Step::StartOver),
        },
        // The range starts at or past the end: either the part is already whole (an earlier
        // run was stopped between the last byte and the rename) or it belongs to a bigger,
        // different file.
        416 if have > 0 => {
            return Ok(match range.and_then(|r| r.total) {
                Some(total) if total == have => Step::Complete,
                _ => Step::StartOver,
            });
        }
        _ => {
            return Err(FetchError::Status {
                url: opts.url.clone(),
                status,
            });
        }
    };

    // Created only now, so that failing to connect leaves no empty folder behind.
    if let Some(dir) = part.parent() {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(io_at(part))?;
    file.set_len(start).map_err(io_at(part))?;
    file.seek(SeekFrom::Start(start)).map_err(io_at(part))?;

    match total {
        Some(t) if start > 0 => println!(
            "downloading {} ({}), resuming at {}",
            opts.url,
            HumanBytes(t),
            HumanBytes(start)
        ),
        Some(t) => println!("downloading {} ({})", opts.url, HumanBytes(t)),
        None => println!("downloading {} (size unknown)", opts.url),
    }
    let bar = progress_bar(opts.progress, total, start);
    let began = Instant::now();
    let mut got = start;
    let mut reader = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let cut = loop {
        match reader.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                file.write_all(&buf[..n]).map_err(io_at(part))?;
                got += n as u64;
                bar.set_position(got);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(e),
        }
    };
    // Whatever arrived is kept, cut or not: it is what the next attempt resumes from.
    file.sync_all().map_err(io_at(part))?;
    bar.finish_and_clear();
    let cut = cut.or_else(|| {
        total.filter(|&t| got < t).map(|_| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end",
            )
        })
    });
    if let Some(source) = cut {
        return Err(FetchError::Interrupted {
            got,
            total,
            part: part.to_path_buf(),
            source,
        });
    }
    let secs = began.elapsed().as_secs_f64().max(1e-3);
    println!(
        "downloaded {} in {secs:.1} s ({}/s)",
        HumanBytes(got - start),
        HumanBytes(((got - start) as f64 / secs) as u64)
    );
    Ok(Step::Complete)
}

fn progress_bar(enabled: bool, total: Option<u64>, start: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let (template, len) = match total {
        Some(t) => (
            "  [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            Some(t),
        ),
        None => ("  {spinner} {bytes} {binary_bytes_per_sec}", None),
    };
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr()).with_style(
        ProgressStyle::with_template(template)
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    // Jump to the resumed offset, then forget that jump, or the speed would count the bytes
    // an earlier run downloaded as if they had arrived just now.
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// A parsed `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`).
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: Option<u64>,
    total: Option<u64>,
}

impl ContentRange {
    fn parse(value: &str) -> Option<Self> {
        let rest = value.trim().strip_prefix("bytes")?.trim_start();
        let (span, total) = rest.split_once('/')?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        let start = match span.trim() {
            "*" => None,
            s => Some(s.split_once('-')?.0.trim().parse().ok()?),
        };
        Some(ContentRange { start, total })
    }
}

/// Unpacks `archive` (`.tar.gz` or plain `.tar`) into `dest`.
///
/// Entries go to a staging folder inside `dest` first and are moved into place only once the
/// whole archive has been checked and written, so a refused or broken archive leaves nothing
/// behind. Links, devices, absolute paths and `..` are refused rather than skipped: the
/// official release holds none, so any of them means the file is not what it claims to be.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), FetchError> {
    remove_stale_staging(dest);
    let staging = dest.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_at(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io_at(&staging))?;
    let result = unpack_into(archive, &staging)
        .and_then(|()| {
            dataset::detect(&staging)
                .map(|_| ())
                .map_err(|source| FetchError::NoData {
                    archive: archive.to_path_buf(),
                    source,
                })
        })
        .and_then(|()| move_into_place(&staging, dest));
    fs::remove_dir_all(&staging).ok();
    result
}

/// Staging folders of earlier runs that were killed mid-unpack.
fn remove_stale_staging(dest: &Path) {
    let Ok(entries) = fs::read_dir(dest) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let stale = entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_dir());
        if stale {
            fs::remove_dir_all(entry.path()).ok();
        }
    }
}

fn unpack_into(archive: &Path, staging: &Path) -> Result<(), FetchError> {
    let mut file = File::open(archive).map_err(io_at(archive))?;
    let mut magic = [0u8; 2];
    let gzipped = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.seek(SeekFrom::Start(0)).map_err(io_at(archive))?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut tarball = tar::Archive::new(reader);
    let refuse = |entry: &str, reason: &str| FetchError::UnsafeEntry {
        archive: archive.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    let mut written = 0u64;
    for entry in tarball.entries().map_err(io_at(archive))? {
        let mut entry = entry.map_err(io_at(archive))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let rel = safe_relative(Path::new(&raw)).map_err(|reason| refuse(&raw, reason))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = staging.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(io_at(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                written += entry.size();
                if written > MAX_UNPACKED {
                    return Err(refuse(
                        &raw,
                        &format!("takes the contents past {}", HumanBytes(MAX_UNPACKED)),
                    ));
                }
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                // No entry can have planted a link (they are refused), so creating through
                // `target` stays inside the staging folder.
                let mut out = File::create(&target).map_err(io_at(&target))?;
                io::copy(&mut entry, &mut out).map_err(io_at(&target))?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(refuse(&raw, "is a link"));
            }
            other => {
                return Err(refuse(&raw, &format!("has unsupported type {other:?}")));
            }
        }
    }
    Ok(())
}

/// `path` with `.` components dropped, or why it could reach outside the target folder.
fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("climbs out of the target folder with '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// Moves the staging folder's top-level entries into `dest`, never replacing anything: a
/// rename onto an existing file would silently overwrite it.
fn move_into_place(staging: &Path, dest: &Path) -> Result<(), FetchError> {
    let entries: Vec<_> = fs::read_dir(staging)
        .map_err(io_at(staging))?
        .collect::<Result<_, _>>()
        .map_err(io_at(staging))?;
    for entry in &entries {
        let target = dest.join(entry.file_name());
        if fs::symlink_metadata(&target).is_ok() {
            return Err(FetchError::Exists { path: target });
        }
    }
    for entry in entries {
        let target = dest.join(entry.file_name());
        fs::rename(entry.path(), &target).map_err(io_at(&target))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_with_and_without_algorithm() {
        let md5 = Checksum::official();
        assert_eq!(md5.algorithm, Algorithm::Md5);
        assert_eq!(md5.to_string(), format!("md5:{DEFAULT_CHECKSUM}"));
        assert_eq!(
            format!("MD5:{}", DEFAULT_CHECKSUM.to_uppercase())
                .parse::<Checksum>()
                .unwrap(),
            md5
        );
        let sha = format!("sha256:{}", "ab".repeat(32))
            .parse::<Checksum>()
            .unwrap();
        assert_eq!(sha.algorithm, Algorithm::Sha256);
        assert_eq!(
            "cd".repeat(32).parse::<Checksum>().unwrap().algorithm,
            Algorithm::Sha256
        );
        for bad in [
            "",
            "md5:123",
            "sha1:00",
            "zz".repeat(16).as_str(),
            "md5:",
            "123",
        ] {
            assert!(bad.parse::<Checksum>().is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_match_known_vectors() {
        let md5 = Checksum::official();
        assert_eq!(
            md5.digest(&b"abc"[..]).unwrap(),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        let sha = format!("sha256:{}", "00".repeat(32))
            .parse::<Checksum>()
            .unwrap();
        assert_eq!(
            sha.digest(&b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn archive_names_come_from_the_url_when_plain() {
        assert_eq!(archive_name(DEFAULT_URL), "cifar-10-binary.tar.gz");
        assert_eq!(
            archive_name("http://127.0.0.1:8000/m/cifar.tar?token=x#y"),
            "cifar.tar"
        );
        assert_eq!(archive_name("http://host"), FALLBACK_NAME);
        assert_eq!(archive_name("http://host/dir/"), FALLBACK_NAME);
        assert_eq!(archive_name("http://host/.hidden"), FALLBACK_NAME);
        assert_eq!(archive_name("http://host/a%2F..%2Fb"), FALLBACK_NAME);
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for url in [
            "http://127.0.0.1:8000/x.tar.gz",
            "http://localhost/x",
            "http://[::1]:80/x",
            "http://user@127.0.0.2/x",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            DEFAULT_URL,
            "http://10.0.0.1/x",
            "http://localhost.example.com/x",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            ContentRange::parse("bytes 100-199/200"),
            Some(ContentRange {
                start: Some(100),
                total: Some(200)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes */200"),
            Some(ContentRange {
                start: None,
                total: Some(200)
            })
        );
        assert_eq!(
            ContentRange::parse("bytes 0-9/*"),
            Some(ContentRange {
                start: Some(0),
                total: None
            })
        );
        assert_eq!(ContentRange::parse("items 0-9/10"), None);
        assert_eq!(ContentRange::parse("bytes x-9/10"), None);
    }

    #[test]
    fn only_relative_paths_inside_the_target_are_safe() {
        assert_eq!(
            safe_relative(Path::new("./a/./b.bin")).unwrap(),
            Path::new("a/b.bin")
        );
        assert!(safe_relative(Path::new("a/../../b")).is_err());
        assert!(safe_relative(Path::new("../b")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
    }
}
