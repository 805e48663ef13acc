//! `hf:OWNER/NAME[@REVISION]`: a repository's files from the Hugging Face Hub, downloaded once
//! into a cache directory (one folder per revision), reporting progress to a callback, and
//! reused afterwards.
//! `HF_ENDPOINT` overrides the Hub's address (mirrors, and the tests' local server);
//! `WEBCNN_CACHE` overrides the cache directory.
//!
//! Downloads time out on a stall (no byte for `WEBCNN_STALL_S`, default 60 s), never on
//! their total time, and resume: a broken or stalled transfer continues from its `.part`
//! file with a Range request (`If-Range` on the ETag, so a file changed meanwhile starts
//! over), a few times within one call and across calls. One process downloads a file at a
//! time: the others wait for it (a lock file naming its pid; a dead holder's lock is taken
//! over).

use super::WeightsError;
#[cfg(feature = "hub")]
use std::io::Read;
use std::io::Write;
use std::path::{Path, PathBuf};
#[cfg(feature = "hub")]
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Attempts per file within one call (each resuming the last).
const ATTEMPTS: usize = 5;

pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
        .trim_end_matches('/')
        .to_string()
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WEBCNN_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("webcnn")
}

#[cfg(feature = "hub")]
/// How long a download may go without a byte.
fn stall_limit() -> Duration {
    std::env::var("WEBCNN_STALL_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(60), Duration::from_secs_f64)
}

/// Where `file` of `repo` at `revision` is (or will be) cached.
pub fn cached_path(repo: &str, revision: &str, file: &str) -> PathBuf {
    cache_dir()
        .join("hub")
        .join(repo.replace('/', "--"))
        .join(revision)
        .join(file)
}

/// What the cache knows of a file it holds: the server's ETag and the repository commit
/// (`X-Repo-Commit`) it came from, where the server said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub etag: Option<String>,
    pub commit: Option<String>,
    pub size: u64,
}

fn side(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

/// The origin recorded beside a cached file, if any.
pub fn origin(path: &Path) -> Option<Origin> {
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(side(path, ".origin")).ok()?).ok()?;
    let s = |k: &str| j[k].as_str().map(String::from);
    Some(Origin {
        etag: s("etag"),
        commit: s("commit"),
        size: j["size"].as_u64()?,
    })
}

#[cfg(feature = "hub")]
fn write_origin(path: &Path, o: &Origin) -> std::io::Result<()> {
    let j = serde_json::json!({"etag": o.etag, "commit": o.commit, "size": o.size});
    std::fs::write(side(path, ".origin"), j.to_string())
}

/// What a download reports as it goes, for a front end to show (the CLI draws a progress
/// bar); the library itself prints nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress<'a> {
    /// Bytes of the file so far (a resumed one starts where its `.part` ended), and the
    /// total where the server gave it.
    Bytes {
        repo: &'a str,
        got: u64,
        total: Option<u64>,
    },
    /// The transfer ended: saved, or broken off (a retry may follow).
    End,
    /// Worth telling the user: a broken transfer resumed, another process downloading
    /// the file, the file saved.
    Note(String),
}

/// Who watches a download, if anyone.
pub type OnProgress<'a> = Option<&'a (dyn Fn(Progress) + Sync)>;

fn note(progress: OnProgress, msg: String) {
    match progress {
        Some(f) => f(Progress::Note(msg)),
        None => log::info!("{msg}"),
    }
}

/// `file` of `repo` at `revision`: from the cache, else downloaded into it. `None` when
/// the repository has no such file (HTTP 404; remembered, so not asked again).
pub fn fetch(
    repo: &str,
    revision: &str,
    file: &str,
    progress: OnProgress,
) -> Result<Option<PathBuf>, WeightsError> {
    let path = cached_path(repo, revision, file);
    if path.is_file() {
        return Ok(Some(path));
    }
    let absent = side(&path, ".absent");
    if absent.is_file() {
        return Ok(None);
    }
    let io = |what: &str, p: &Path, e: std::io::Error| {
        WeightsError::Io(format!("{what} {}: {e}", p.display()))
    };
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .map_err(|e| io("creating the cache for", &path, e))?;
    let _lock = match Lock::take(&path, progress)? {
        Taken::Ours(l) => l,
        // Another process finished it while this one waited.
        Taken::Done => return Ok(Some(path)),
    };
    if path.is_file() {
        return Ok(Some(path));
    }
    let url = format!("{}/{repo}/resolve/{revision}/{file}", endpoint());
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            // A short pause before resuming: a server that dropped us may need a moment.
            std::thread::sleep(Duration::from_millis(200 << attempt.min(4)));
        }
        match download(&url, &path, repo, progress) {
            Ok(Some(())) => return Ok(Some(path)),
            Ok(None) => {
                std::fs::write(&absent, b"").map_err(|e| io("writing", &absent, e))?;
                return Ok(None);
            }
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Retry(e)) => {
                note(progress, format!("{e}; resuming"));
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

#[cfg_attr(not(feature = "hub"), allow(dead_code))]
enum Failure {
    /// Worth another attempt (a stall, a dropped connection, a server error).
    Retry(WeightsError),
    Final(WeightsError),
}

/// Built without the `hub` feature: no HTTP client, so nothing is downloaded (what is
/// cached already is still read).
#[cfg(not(feature = "hub"))]
fn download(url: &str, _: &Path, _: &str, _: OnProgress) -> Result<Option<()>, Failure> {
    Err(Failure::Final(WeightsError::Download(format!(
        "{url}: this build of webcnn has no `hub` feature, so it downloads nothing"
    ))))
}

/// One attempt: resumes `path`'s `.part` where it has one. `Ok(None)`: HTTP 404.
#[cfg(feature = "hub")]
fn download(
    url: &str,
    path: &Path,
    repo: &str,
    progress: OnProgress,
) -> Result<Option<()>, Failure> {
    let part = side(path, ".part");
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Failure::Final(WeightsError::Io(format!("{what} {}: {e}", p.display())))
    };
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let part_origin = origin(&part);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(stall_limit().max(Duration::from_secs(1))))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    // Resume only what the same file (same ETag) began; a changed file starts over.
    if let Some(etag) = part_origin.as_ref().and_then(|o| o.etag.clone()) {
        if have > 0 {
            req = req
                .header("Range", &format!("bytes={have}-"))
                .header("If-Range", &etag);
        }
    }
    let resp = req.call().map_err(|e| {
        let msg = format!("{url}: {e}");
        match e {
            ureq::Error::Timeout(_) | ureq::Error::Io(_) | ureq::Error::ConnectionFailed => {
                Failure::Retry(WeightsError::Download(msg))
            }
            _ => Failure::Final(WeightsError::Download(msg)),
        }
    })?;
    let status = resp.status().as_u16();
    match status {
        404 => return Ok(None),
        200 | 206 => {}
        500..=599 | 429 => {
            return Err(Failure::Retry(WeightsError::Download(format!(
                "{url}: HTTP {status}"
            ))))
        }
        _ => {
            return Err(Failure::Final(WeightsError::Download(format!(
                "{url}: HTTP {status}"
            ))))
        }
    }
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    let resumed = status == 206;
    let start = if resumed { have } else { 0 };
    let total = length.map(|l| l + start);
    let origin_now = Origin {
        etag: header("etag").or_else(|| part_origin.as_ref().and_then(|o| o.etag.clone())),
        commit: header("x-repo-commit"),
        size: total.unwrap_or(0),
    };
    write_origin(&part, &origin_now).map_err(|e| io("writing", &part, e))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(|e| io("opening", &part, e))?;
    let report = |got: u64| {
        if let Some(f) = progress {
            f(Progress::Bytes { repo, got, total })
        }
    };
    let end = || {
        if let Some(f) = progress {
            f(Progress::End)
        }
    };
    let mut got = start;
    report(got);
    let mut reader = Idle::new(resp.into_body().into_reader(), stall_limit());
    loop {
        match reader.next() {
            Ok(Some(chunk)) => {
                file.write_all(&chunk)
                    .map_err(|e| io("writing", &part, e))?;
                got += chunk.len() as u64;
                report(got);
            }
            Ok(None) => break,
            Err(e) => {
                end();
                let _ = file.sync_all();
                return Err(Failure::Retry(WeightsError::Download(format!(
                    "{url}: {e} after {got} bytes"
                ))));
            }
        }
    }
    end();
    if let Some(t) = total {
        if got != t {
            let _ = file.sync_all();
            return Err(Failure::Retry(WeightsError::Download(format!(
                "{url}: the connection ended after {got} of {t} bytes"
            ))));
        }
    }
    file.sync_all().map_err(|e| io("writing", &part, e))?;
    drop(file);
    std::fs::rename(&part, path).map_err(|e| io("saving", path, e))?;
    let _ = std::fs::rename(side(&part, ".origin"), side(path, ".origin"));
    note(progress, format!("saved {} ({got} bytes)", path.display()));
    Ok(Some(()))
}

/// A body read in chunks on a helper thread, so that a read which never returns (a stalled
/// connection) is noticed after `limit`: the helper is then abandoned with its socket, and
/// ends when the socket does.
#[cfg(feature = "hub")]
struct Idle {
    chunks: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    limit: Duration,
}

#[cfg(feature = "hub")]
impl Idle {
    fn new(body: impl Read + Send + 'static, limit: Duration) -> Idle {
        let (tx, chunks) = mpsc::sync_channel(4);
        std::thread::spawn(move || {
            let mut body = body;
            let mut buf = vec![0u8; 1 << 18];
            loop {
                let r = body.read(&mut buf).map(|n| buf[..n].to_vec());
                let end = !matches!(&r, Ok(c) if !c.is_empty());
                if tx.send(r).is_err() || end {
                    return;
                }
            }
        });
        Idle { chunks, limit }
    }

    /// The next chunk; `None` at the end of the body.
    fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.chunks.recv_timeout(self.limit) {
            Ok(Ok(c)) if c.is_empty() => Ok(None),
            Ok(Ok(c)) => Ok(Some(c)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "stalled (no data for {:.0} s)",
                self.limit.as_secs_f64()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
        }
    }
}

/// The right to download one file: `<file>.lock` holding this process's pid.
struct Lock(PathBuf);

enum Taken {
    Ours(Lock),
    /// The file appeared while waiting for another process.
    Done,
}

impl Lock {
    fn take(path: &Path, progress: OnProgress) -> Result<Taken, WeightsError> {
        let lock = side(path, ".lock");
        let started = Instant::now();
        let mut told = false;
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return Ok(Taken::Ours(Lock(lock)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(WeightsError::Io(format!(
                        "creating {}: {e}",
                        lock.display()
                    )))
                }
            }
            if path.is_file() {
                return Ok(Taken::Done);
            }
            let holder: Option<u32> = std::fs::read_to_string(&lock)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            match holder {
                Some(pid) if !alive(pid) => {
                    // Its holder is gone: take it over (the .part is resumed).
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                // Being written this instant: look again.
                None if started.elapsed() < Duration::from_secs(2) => {}
                None => {
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                Some(pid) => {
                    if !told {
                        let msg = format!(
                            "process {pid} is downloading {}; waiting for it",
                            path.display()
                        );
                        note(progress, msg);
                        told = true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether process `pid` still runs (Linux: `/proc`; elsewhere `kill(pid, 0)`).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if Path::new("/proc/self").exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }
    #[cfg(not(unix))]
    {
        true
    }
}
