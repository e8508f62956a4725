//! A TCP proxy in front of a server that can lose answers: with [`LossyProxy::lose_answers`]
//! on, every request still reaches the server (which applies it), but the answer is read and
//! thrown away and the client's connection is closed, as when a network drops a reply. The
//! client cannot tell whether its write took effect. With [`LossyProxy::hang`] on, requests are
//! swallowed and nothing ever comes back, as from a server that accepts connections and hangs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

/// A running proxy (its threads end with the process).
pub struct LossyProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    lose: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
    hang: Arc<AtomicBool>,
    hang_on: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl LossyProxy {
    /// Listens on a free port and forwards every connection to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lose = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicU64::new(0));
        let hang = Arc::new(AtomicBool::new(false));
        let hang_on = Arc::new(std::sync::Mutex::new(None));
        let (l, n, h, on) = (lose.clone(), lost.clone(), hang.clone(), hang_on.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (l, n, h, on) = (l.clone(), n.clone(), h.clone(), on.clone());
                let (c_read, s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c_read, s_write, h, on));
                std::thread::spawn(move || answers(server, client, l, n));
            }
        });
        LossyProxy {
            url,
            lose,
            lost,
            hang,
            hang_on,
        }
    }

    /// Swallows, from now on, every request whose bytes contain `text` (and the rest of its
    /// connection): a server that hangs on some statements only.
    pub fn hang_on(&self, text: &str) {
        *self.hang_on.lock().unwrap() = Some(text.as_bytes().to_vec());
    }

    /// Whether requests are swallowed, unanswered, from now on.
    pub fn hang(&self, on: bool) {
        self.hang.store(on, SeqCst);
    }

    /// Whether answers are lost from now on.
    pub fn lose_answers(&self, on: bool) {
        self.lose.store(on, SeqCst);
    }

    /// Answers thrown away so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(SeqCst)
    }
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    hang: Arc<AtomicBool>,
    hang_on: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) {
    let mut buf = [0u8; 64 * 1024];
    let mut swallowing = false;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(text) = hang_on.lock().unwrap().as_deref() {
            swallowing |= buf[..n].windows(text.len()).any(|w| w == text);
        }
        if swallowing || hang.load(SeqCst) {
            // Swallowed: the server never sees it, the client never hears back.
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn answers(
    mut server: TcpStream,
    mut client: TcpStream,
    lose: Arc<AtomicBool>,
    lost: Arc<AtomicU64>,
) {
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = server.read(&mut buf) {
        if n == 0 {
            break;
        }
        if lose.load(SeqCst) {
            // Let the server finish its answer (it may send headers before it has applied the
            // request), so it has applied it; then the client never hears of it.
            let _ = server.set_read_timeout(Some(std::time::Duration::from_millis(500)));
            while matches!(server.read(&mut buf), Ok(n) if n > 0) {}
            lost.fetch_add(1, SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}
