//! Test fixture: a static HTTP/1.1 file server on 127.0.0.1, started by a test and stopped when
//! dropped. It stands in for dl.k8s.io, pkgs.k8s.io, cloud-images.ubuntu.com and other upstream
//! hosts that tests cannot reach. It serves the files under its root (streamed, so a 2 GiB disk
//! image is fine), answers `Range: bytes=N-` with 206 (unless told not to), and records every
//! path requested. A [`Behaviour`] makes it misbehave the way real servers and links do: cut
//! the connection after N bytes of a body, or answer 503 (or any status) a few times first.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// How the server misbehaves. The default is a well-behaved server.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Cut the connection after sending this many bytes of a body (longer than that)...
    pub cut_after: Option<u64>,
    /// ...for this many responses (then serve normally).
    pub cut_times: u32,
    /// Answer this status (with `Retry-After: 0`) instead of the file...
    pub fail_status: Option<u16>,
    /// ...for this many requests.
    pub fail_times: u32,
    /// Answer `Range` requests with 206; when false, a Range request gets the whole file, 200.
    pub ranges: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { cut_after: None, cut_times: 0, fail_status: None, fail_times: 0, ranges: true }
    }
}

pub struct MirrorServer {
    pub addr: std::net::SocketAddr,
    /// Every path requested, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Every `Range` header received, as `PATH RANGE`.
    pub ranges: Arc<Mutex<Vec<String>>>,
    /// How the server behaves; tests may change it while it runs.
    pub behaviour: Arc<Mutex<Behaviour>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MirrorServer {
    /// Serves `root` on a free port of 127.0.0.1.
    pub fn start(root: &Path) -> MirrorServer {
        Self::start_with(root, Behaviour::default())
    }

    /// Serves `root`, misbehaving as `behaviour` says.
    pub fn start_with(root: &Path, behaviour: Behaviour) -> MirrorServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, reqs, rngs, beh, stop2) = (root.to_path_buf(), Arc::clone(&requests), Arc::clone(&ranges), Arc::clone(&behaviour), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = serve(conn, &root, &reqs, &rngs, &beh);
                }
            }
        });
        MirrorServer { addr, requests, ranges, behaviour, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(mut conn: TcpStream, root: &Path, reqs: &Mutex<Vec<String>>, rngs: &Mutex<Vec<String>>, beh: &Mutex<Behaviour>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range_start = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                let value = value.trim();
                rngs.lock().unwrap().push(format!("{path} {value}"));
                range_start = value.strip_prefix("bytes=").and_then(|v| v.trim_end_matches('-').parse::<u64>().ok());
            }
        }
    }
    reqs.lock().unwrap().push(path.clone());
    let (fail, cut, ranges) = {
        let mut b = beh.lock().unwrap();
        let fail = b.fail_status.filter(|_| b.fail_times > 0);
        if fail.is_some() {
            b.fail_times -= 1;
        }
        let cut = b.cut_after.filter(|_| fail.is_none() && b.cut_times > 0);
        (fail, cut, b.ranges)
    };
    if let Some(status) = fail {
        write!(conn, "HTTP/1.1 {status} Failing\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return conn.flush();
    }
    let rel = path.split('?').next().unwrap_or("").trim_start_matches('/');
    let file = root.join(rel);
    let opened = (!rel.split('/').any(|c| c == "..")).then(|| std::fs::File::open(&file)).and_then(Result::ok).filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
    let Some(mut f) = opened else {
        write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return conn.flush();
    };
    let len = f.metadata()?.len();
    let start = range_start.filter(|&s| ranges && s <= len);
    match start {
        Some(s) if s == len => {
            write!(conn, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return conn.flush();
        }
        Some(s) => {
            write!(conn, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", len - 1, len - s)?;
            f.seek(std::io::SeekFrom::Start(s))?;
        }
        None => write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n")?,
    }
    let remaining = len - start.unwrap_or(0);
    match cut.filter(|&n| n < remaining) {
        Some(n) => {
            std::io::copy(&mut f.take(n), &mut conn)?;
            beh.lock().unwrap().cut_times -= 1;
            conn.flush()?;
            // Hang up in the middle of the body.
            conn.shutdown(std::net::Shutdown::Both)
        }
        None => {
            std::io::copy(&mut f, &mut conn)?;
            conn.flush()
        }
    }
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
