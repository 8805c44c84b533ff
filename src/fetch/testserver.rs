//! Test fixture: a static HTTP/1.1 file server on 127.0.0.1, started by a test and stopped when
//! dropped. It stands in for dl.k8s.io, pkgs.k8s.io and other upstream hosts that tests cannot
//! reach. It serves the files under its root and records every path requested.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct MirrorServer {
    pub addr: std::net::SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MirrorServer {
    /// Serves `root` on a free port of 127.0.0.1.
    pub fn start(root: &Path) -> MirrorServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, reqs, stop2) = (root.to_path_buf(), Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve(conn, &root, &reqs);
                }
            }
        });
        MirrorServer { addr, requests, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(mut conn: TcpStream, root: &Path, reqs: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    reqs.lock().unwrap().push(path.clone());
    let rel = path.split('?').next().unwrap_or("").trim_start_matches('/');
    let file = root.join(rel);
    match (!rel.split('/').any(|c| c == "..")).then(|| std::fs::read(&file)).and_then(Result::ok) {
        Some(body) => {
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
            conn.write_all(&body)?;
        }
        None => write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?,
    }
    conn.flush()
}

impl Drop for MirrorServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
