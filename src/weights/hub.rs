//! `hf:REPO`: a repository's `model.safetensors` from the Hugging Face Hub, downloaded once
//! into a cache directory with a progress bar and reused afterwards.
//! `HF_ENDPOINT` overrides the Hub's address (mirrors, and the tests' local server);
//! `WEBCNN_CACHE` overrides the cache directory.

use super::WeightsError;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

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

/// Where `repo`'s weights are (or will be) cached.
pub fn cached_path(repo: &str) -> PathBuf {
    cache_dir()
        .join("hub")
        .join(repo.replace('/', "--"))
        .join("model.safetensors")
}

/// The cached `model.safetensors` of `repo`, downloading it first if needed.
pub fn fetch(repo: &str, progress: bool) -> Result<PathBuf, WeightsError> {
    let path = cached_path(repo);
    if path.is_file() {
        return Ok(path);
    }
    let url = format!("{}/{repo}/resolve/main/model.safetensors", endpoint());
    let io =
        |what: &str, e: std::io::Error| WeightsError::Io(format!("{what} {}: {e}", path.display()));
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .map_err(|e| io("creating the cache for", e))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut resp = agent.get(&url).call().map_err(|e| match e {
        ureq::Error::StatusCode(404) => WeightsError::Download(format!(
            "{url}: not found (HTTP 404): does '{repo}' publish model.safetensors?"
        )),
        ureq::Error::StatusCode(code) => WeightsError::Download(format!("{url}: HTTP {code}")),
        e => WeightsError::Download(format!("{url}: {e}")),
    })?;
    let total: Option<u64> = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bar = if progress {
        let b = indicatif::ProgressBar::new(total.unwrap_or(0));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({percent}%, {bytes_per_sec})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_message(format!("downloading {repo}"));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let part = path.with_extension("safetensors.part");
    let mut file = std::fs::File::create(&part).map_err(|e| io("creating", e))?;
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| WeightsError::Download(format!("{url}: {e} after {got} bytes")))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(|e| io("writing", e))?;
        got += n as u64;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    if let Some(t) = total {
        if got != t {
            let _ = std::fs::remove_file(&part);
            return Err(WeightsError::Download(format!(
                "{url}: got {got} of {t} bytes"
            )));
        }
    }
    file.sync_all().map_err(|e| io("writing", e))?;
    std::fs::rename(&part, &path).map_err(|e| io("saving", e))?;
    if progress {
        eprintln!("saved {} ({got} bytes)", path.display());
    }
    Ok(path)
}
