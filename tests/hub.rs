//! `hf:OWNER/NAME[@REV]` and Hub-layout folders, against a local HTTP server that serves
//! files the way the Hub does (`/<repo>/resolve/<revision>/<file>`, ETags, Range requests)
//! and misbehaves on cue: throttled, stalled, dropped. Own test binary: it sets env vars,
//! so its parts run one after another in one test.
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use webcnn::models::{Head, Model};
use webcnn::weights::{
    hub, load_for, save_safetensors, synthetic, Source, TensorMap, WeightsError,
};

/// What the server does with the next requests for a path.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Send `bytes` of the body, then go quiet for `secs` and close.
    StallAfter { bytes: usize, secs: f64 },
    /// Send `bytes` of the body, then close the connection.
    DropAfter { bytes: usize },
    /// The whole body in `chunks` pieces, `ms` apart.
    Throttle { chunks: usize, ms: u64 },
}

#[derive(Default)]
struct State {
    /// path -> (body, etag)
    files: HashMap<String, (Arc<Vec<u8>>, String)>,
    /// path -> acts for its next requests, in order
    acts: HashMap<String, Vec<Act>>,
    /// Every request: (path, Range header).
    log: Vec<(String, Option<String>)>,
}

#[derive(Clone)]
struct Server {
    base: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || respond(s, &st));
            }
        });
        Server { base, state }
    }
    fn put(&self, path: &str, body: Vec<u8>, etag: &str) {
        let mut s = self.state.lock().unwrap();
        s.files
            .insert(path.to_string(), (Arc::new(body), etag.to_string()));
    }
    fn act(&self, path: &str, acts: &[Act]) {
        let mut s = self.state.lock().unwrap();
        s.acts.insert(path.to_string(), acts.to_vec());
    }
    fn requests(&self, path: &str) -> Vec<Option<String>> {
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn respond(mut s: TcpStream, st: &Mutex<State>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut range, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map(|n| n <= 2).unwrap_or(true) {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or(("", ""));
        match k.to_ascii_lowercase().as_str() {
            "range" => range = Some(v.trim().to_string()),
            "if-range" => if_range = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let (file, act) = {
        let mut g = st.lock().unwrap();
        g.log.push((path.clone(), range.clone()));
        let file = g.files.get(&path).cloned();
        let act = g
            .acts
            .get_mut(&path)
            .and_then(|a| (!a.is_empty()).then(|| a.remove(0)));
        (file, act)
    };
    let Some((body, etag)) = file else {
        let _ = write!(
            s,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    // A Range the same file (same ETag) can serve: 206 with the rest.
    let start = match (&range, &if_range) {
        (Some(r), Some(e)) if *e == etag => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n < body.len()),
        _ => None,
    };
    let part = &body[start.unwrap_or(0)..];
    let status = if start.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {etag}\r\nX-Repo-Commit: c0ffee{}\r\nConnection: close\r\n\r\n",
        part.len(),
        etag.trim_matches('"')
    );
    match act {
        None => {
            let _ = s.write_all(part);
        }
        Some(Act::StallAfter { bytes, secs }) => {
            let _ = s.write_all(&part[..bytes.min(part.len())]);
            let _ = s.flush();
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
        Some(Act::DropAfter { bytes }) => {
            let _ = s.write_all(&part[..bytes.min(part.len())]);
        }
        Some(Act::Throttle { chunks, ms }) => {
            for c in part.chunks(part.len().div_ceil(chunks).max(1)) {
                if s.write_all(c).and_then(|_| s.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
}

fn resnet18_with(classes: usize, seed: u64) -> TensorMap {
    let m = Model::get("resnet18")
        .unwrap()
        .with_head(Head::Classes(classes));
    synthetic(&m.default_graph(1), seed)
}

const FT3: &str = include_str!("fixtures/own-model/timm/resnet18-ft3/config.json");

fn cache() -> PathBuf {
    std::env::temp_dir().join(format!("webcnn-hub-test-{}", std::process::id()))
}

fn src(s: &str) -> Source {
    s.parse().unwrap()
}

#[test]
fn hub_and_hub_layout_folders() {
    let _ = std::fs::remove_dir_all(cache());
    let srv = Server::start();
    std::env::set_var("HF_ENDPOINT", &srv.base);
    std::env::set_var("WEBCNN_CACHE", cache());
    std::env::set_var("WEBCNN_STALL_S", "0.5");
    downloads_are_cached_per_revision(&srv);
    timm_repositories_bring_their_architecture_labels_and_transform(&srv);
    folders_laid_out_as_a_repository(&srv);
    slow_stalled_and_dropped_downloads_complete(&srv);
    an_interrupted_download_resumes_and_one_process_downloads_at_a_time(&srv);
    let _ = std::fs::remove_dir_all(cache());
}

fn downloads_are_cached_per_revision(srv: &Server) {
    let m = Model::get("vgg11_cifar").unwrap();
    let w = synthetic(&m.default_graph(1), 4);
    srv.put(
        "/acme/vgg11_cifar/resolve/main/model.safetensors",
        save_safetensors(&w),
        "\"e1\"",
    );
    // Progress reaches the caller's observer: bytes up to the whole file, the end, a note.
    let seen = std::sync::Mutex::new(vec![]);
    let observe = |p: hub::Progress| seen.lock().unwrap().push(format!("{p:?}"));
    let got = load_for(
        &src("hf:acme/vgg11_cifar"),
        Some("vgg11_cifar"),
        Some(&observe),
    )
    .unwrap();
    assert_eq!(got.tensors, w);
    let seen = seen.into_inner().unwrap();
    let size = save_safetensors(&w).len();
    let whole = format!("got: {size}, total: Some({size})");
    assert!(seen.iter().any(|e| e.contains(&whole)), "{seen:?}");
    assert!(seen.iter().any(|e| e == "End"), "{seen:?}");
    assert!(seen.last().unwrap().contains("saved"), "{seen:?}");
    let path = hub::cached_path("acme/vgg11_cifar", "main", "model.safetensors");
    assert!(path.starts_with(cache()) && path.is_file());
    // The cache knows what it holds: the ETag and the repository commit.
    let o = hub::origin(&path).unwrap();
    assert_eq!(
        (o.etag.as_deref(), o.commit.as_deref()),
        (Some("\"e1\""), Some("c0ffeee1"))
    );
    let n = srv
        .requests("/acme/vgg11_cifar/resolve/main/model.safetensors")
        .len();
    assert_eq!(n, 1);
    // Again: from the cache, no request (config.json's 404 is remembered too).
    let again = load_for(&src("hf:acme/vgg11_cifar"), Some("vgg11_cifar"), None).unwrap();
    assert_eq!(again.tensors, w);
    assert_eq!(
        srv.requests("/acme/vgg11_cifar/resolve/main/model.safetensors")
            .len(),
        1
    );
    assert_eq!(
        srv.requests("/acme/vgg11_cifar/resolve/main/config.json")
            .len(),
        1
    );

    // A pinned revision is its own cache entry.
    let w2 = synthetic(&m.default_graph(1), 5);
    srv.put(
        "/acme/vgg11_cifar/resolve/v2/model.safetensors",
        save_safetensors(&w2),
        "\"e2\"",
    );
    let v2 = load_for(&src("hf:acme/vgg11_cifar@v2"), Some("vgg11_cifar"), None).unwrap();
    assert_eq!(v2.tensors, w2);
    assert!(hub::cached_path("acme/vgg11_cifar", "v2", "model.safetensors").is_file());

    // A repository without weights, an unreachable Hub: clear errors, nothing cached.
    let e = load_for(&src("hf:acme/nothing"), Some("resnet18"), None).unwrap_err();
    assert!(
        e.to_string()
            .contains("neither model.safetensors nor pytorch_model.bin"),
        "{e}"
    );
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let e = webcnn::weights::load(&src("hf:acme/other"), m, None).unwrap_err();
    assert!(matches!(e, WeightsError::Download(_)), "{e}");
    std::env::set_var("HF_ENDPOINT", &srv.base);
}

fn timm_repositories_bring_their_architecture_labels_and_transform(srv: &Server) {
    // What timm's push_to_hf_hub writes: config.json and pytorch_model.bin (torch.save).
    let w = resnet18_with(3, 7);
    srv.put(
        "/me/pets/resolve/main/config.json",
        FT3.as_bytes().to_vec(),
        "\"c\"",
    );
    srv.put(
        "/me/pets/resolve/main/pytorch_model.bin",
        common::torch_save(&w, false),
        "\"p\"",
    );
    let l = load_for(&src("hf:me/pets"), None, None).unwrap();
    assert_eq!(l.model.id, "resnet18");
    assert_eq!(l.model.num_classes(), 3);
    assert_eq!(l.model.labels.names(), ["cat", "dog", "bird"]);
    assert_eq!(
        l.model.preprocess,
        Model::get("resnet18").unwrap().preprocess
    );
    assert_eq!(l.tensors, w);
    // The a1_in1k config's transform: bicubic, crop_pct 0.95.
    let mut a1 = serde_json::from_str::<serde_json::Value>(include_str!(
        "fixtures/own-model/timm/resnet50.a1_in1k/config.json"
    ))
    .unwrap();
    a1["architecture"] = "resnet18".into();
    srv.put(
        "/me/a1/resolve/main/config.json",
        a1.to_string().into_bytes(),
        "\"c\"",
    );
    srv.put(
        "/me/a1/resolve/main/model.safetensors",
        save_safetensors(&resnet18_with(1000, 1)),
        "\"m\"",
    );
    let l = load_for(&src("hf:me/a1"), None, None).unwrap();
    assert_eq!(
        l.model.preprocess.interpolation,
        webcnn::preprocess::Interpolation::Bicubic
    );
    assert_eq!(l.model.preprocess.crop_pct, 0.95);
    assert_eq!(l.model.labels.id(), "imagenet1k");
    // model.safetensors is taken before pytorch_model.bin: this repository has no .bin.
    assert!(srv
        .requests("/me/a1/resolve/main/pytorch_model.bin")
        .is_empty());
}

fn folder(name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let d = cache().join("folders").join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (f, b) in files {
        std::fs::write(d.join(f), b).unwrap();
    }
    d
}

fn folders_laid_out_as_a_repository(_srv: &Server) {
    let w = resnet18_with(3, 8);
    let d = folder(
        "ft3",
        &[
            ("config.json", FT3.into()),
            ("model.safetensors", save_safetensors(&w)),
        ],
    );
    let s = Source::File(d.display().to_string());
    let l = load_for(&s, None, None).unwrap();
    assert_eq!(
        (l.model.id.as_str(), l.model.num_classes()),
        ("resnet18", 3)
    );
    assert_eq!(l.model.labels.names()[2], "bird");
    // --model that agrees is fine; one that does not is named.
    assert!(load_for(&s, Some("resnet18"), None).is_ok());
    let e = load_for(&s, Some("resnet50"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("architecture 'resnet18', not 'resnet50'"), "{e}");
    // An architecture the zoo lacks: the ones it has are listed.
    let other = FT3.replace(
        "\"architecture\": \"resnet18\"",
        "\"architecture\": \"efficientnet_b0\"",
    );
    let d2 = folder(
        "effnet",
        &[
            ("config.json", other.into()),
            ("model.safetensors", save_safetensors(&w)),
        ],
    );
    let e = load_for(&Source::File(d2.display().to_string()), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'efficientnet_b0'") && e.contains("resnext50_32x4d"),
        "{e}"
    );
    // A config whose class count disagrees with the weights.
    let d3 = folder(
        "ft3-5",
        &[
            ("config.json", FT3.into()),
            ("model.safetensors", save_safetensors(&resnet18_with(5, 1))),
        ],
    );
    let e = load_for(&Source::File(d3.display().to_string()), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("num_classes 3") && e.contains("a head of 5 classes"),
        "{e}"
    );
    // A headless backbone with timm's num_classes 0.
    let mut headless = resnet18_with(3, 2);
    headless.retain(|k, _| !k.starts_with("fc."));
    let cfg0 = FT3.replace("\"num_classes\": 3", "\"num_classes\": 0");
    let cfg0: serde_json::Value = serde_json::from_str(&cfg0).unwrap();
    let mut cfg0 = cfg0;
    cfg0["model_args"]
        .as_object_mut()
        .unwrap()
        .remove("label_names");
    let d4 = folder(
        "headless",
        &[
            ("config.json", cfg0.to_string().into()),
            ("pytorch_model.bin", common::torch_save(&headless, false)),
        ],
    );
    let l = load_for(&Source::File(d4.display().to_string()), None, None).unwrap();
    assert!(!l.model.has_classifier());
    // A folder without weights; a file without config and without --model.
    let d5 = folder("empty", &[("config.json", FT3.into())]);
    let e = load_for(&Source::File(d5.display().to_string()), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("neither model.safetensors nor pytorch_model.bin"),
        "{e}"
    );
    let f = d.join("model.safetensors");
    let e = load_for(&Source::File(f.display().to_string()), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--model"), "{e}");
}

fn slow_stalled_and_dropped_downloads_complete(srv: &Server) {
    let w = resnet18_with(3, 9);
    let body = save_safetensors(&w);
    let n = body.len();
    for (repo, acts, requests) in [
        // 3 s in all, never 0.5 s without a byte: no timeout, one request.
        (
            "slow",
            vec![Act::Throttle {
                chunks: 30,
                ms: 100,
            }],
            1,
        ),
        // Quiet for 3 s after a third: a stall, then resumed from there.
        (
            "stall",
            vec![Act::StallAfter {
                bytes: n / 3,
                secs: 3.0,
            }],
            2,
        ),
        // Dropped twice: resumed twice.
        (
            "drop",
            vec![
                Act::DropAfter { bytes: n / 4 },
                Act::DropAfter { bytes: n / 4 },
            ],
            3,
        ),
    ] {
        let path = format!("/net/{repo}/resolve/main/model.safetensors");
        srv.put(&path, body.clone(), &format!("\"{repo}\""));
        srv.act(&path, &acts);
        let l = load_for(&src(&format!("hf:net/{repo}")), Some("resnet18"), None)
            .unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_eq!(l.tensors, w, "{repo}");
        let reqs = srv.requests(&path);
        assert_eq!(reqs.len(), requests, "{repo}: {reqs:?}");
        // Every request after the first asks for the rest only.
        for r in &reqs[1..] {
            let from: usize = r
                .as_deref()
                .unwrap()
                .trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse()
                .unwrap();
            assert!(from > 0 && from < n, "{repo}: {r:?}");
        }
        assert!(!Path::new(&format!(
            "{}.part",
            hub::cached_path(&format!("net/{repo}"), "main", "model.safetensors").display()
        ))
        .exists());
    }
}

fn an_interrupted_download_resumes_and_one_process_downloads_at_a_time(srv: &Server) {
    let w = resnet18_with(3, 10);
    let body = save_safetensors(&w);
    let path = "/net/resume/resolve/main/model.safetensors";
    srv.put(path, body.clone(), "\"r1\"");
    // A .part left by a process that died: its lock names a pid that is gone.
    let file = hub::cached_path("net/resume", "main", "model.safetensors");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let side = |ext: &str| PathBuf::from(format!("{}{ext}", file.display()));
    std::fs::write(side(".part"), &body[..body.len() / 2]).unwrap();
    std::fs::write(
        side(".part.origin"),
        r#"{"etag":"\"r1\"","commit":null,"size":0}"#,
    )
    .unwrap();
    let dead = (4_000_000..4_100_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    std::fs::write(side(".lock"), dead.to_string()).unwrap();
    let l = load_for(&src("hf:net/resume"), Some("resnet18"), None).unwrap();
    assert_eq!(l.tensors, w);
    assert_eq!(
        srv.requests(path),
        vec![Some(format!("bytes={}-", body.len() / 2))]
    );

    // A .part of a file changed since (another ETag): started over, not spliced.
    let path2 = "/net/changed/resolve/main/model.safetensors";
    srv.put(path2, body.clone(), "\"new\"");
    let file2 = hub::cached_path("net/changed", "main", "model.safetensors");
    std::fs::create_dir_all(file2.parent().unwrap()).unwrap();
    std::fs::write(format!("{}.part", file2.display()), vec![7u8; 1000]).unwrap();
    std::fs::write(
        format!("{}.part.origin", file2.display()),
        r#"{"etag":"\"old\"","commit":null,"size":0}"#,
    )
    .unwrap();
    let l = load_for(&src("hf:net/changed"), Some("resnet18"), None).unwrap();
    assert_eq!(l.tensors, w);

    // Two downloads of one file at once: one downloads, the other waits for it.
    let path3 = "/net/twice/resolve/main/model.safetensors";
    srv.put(path3, body.clone(), "\"t\"");
    srv.act(
        path3,
        &[Act::Throttle {
            chunks: 10,
            ms: 100,
        }],
    );
    let a = std::thread::spawn(|| {
        load_for(&src("hf:net/twice"), Some("resnet18"), None).map(|l| l.tensors)
    });
    std::thread::sleep(Duration::from_millis(300));
    let b = std::thread::spawn(|| {
        load_for(&src("hf:net/twice"), Some("resnet18"), None).map(|l| l.tensors)
    });
    assert_eq!(a.join().unwrap().unwrap(), w);
    assert_eq!(b.join().unwrap().unwrap(), w);
    assert_eq!(srv.requests(path3).len(), 1, "downloaded once");
}
