//! `hf:REPO` downloads, against a local HTTP server that serves files the way the Hub
//! does (`/<repo>/resolve/main/model.safetensors`). Own test binary: it sets env vars.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use webcnn::models::Model;
use webcnn::weights::{hub, load, save_safetensors, synthetic, Source, WeightsError};

/// Serves `body` at `path` (404 elsewhere) until the process ends; counts requests.
fn serve(path: &'static str, body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut hdr = String::new();
            while r.read_line(&mut hdr).map(|n| n > 2).unwrap_or(false) {
                hdr.clear();
            }
            h.fetch_add(1, Ordering::SeqCst);
            let req = line.split_whitespace().nth(1).unwrap_or("").to_string();
            if req == path {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            } else {
                let _ = write!(
                    s,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        }
    });
    (addr, hits)
}

#[test]
fn hub_download_is_cached_and_reused() {
    let m = Model::get("vgg11_cifar").unwrap();
    let g = m.default_graph(1);
    let w = synthetic(&g, 4);
    let (addr, hits) = serve(
        "/acme/vgg11_cifar/resolve/main/model.safetensors",
        save_safetensors(&w),
    );
    let cache = std::env::temp_dir().join(format!("webcnn-hub-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::env::set_var("HF_ENDPOINT", &addr);
    std::env::set_var("WEBCNN_CACHE", &cache);

    let src: Source = "hf:acme/vgg11_cifar".parse().unwrap();
    let got = load(&src, m.clone(), false).unwrap().tensors;
    assert_eq!(got, w);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(hub::cached_path("acme/vgg11_cifar").starts_with(&cache));
    // Second load: from the cache, no request.
    let again = load(&src, m.clone(), false).unwrap().tensors;
    assert_eq!(again, w);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A repository without the file is a clear error, and nothing is cached.
    let e = load(&"hf:acme/nothing".parse().unwrap(), m.clone(), false).unwrap_err();
    assert!(
        matches!(e, WeightsError::Download(ref m) if m.contains("404")),
        "{e}"
    );
    assert!(!hub::cached_path("acme/nothing").exists());

    // An unreachable hub is an error too, not a hang.
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let e = load(&"hf:acme/other".parse().unwrap(), m.clone(), false).unwrap_err();
    assert!(matches!(e, WeightsError::Download(_)), "{e}");
    let _ = std::fs::remove_dir_all(&cache);
}
