//! `/metrics` scrapes share their encoding.
//!
//! Encoding the exposition copies every series (a snapshot, the families, then the text: about
//! 116 MB of text for 7,471 histograms with 8 tags each). Each scrape encoding on its own, a
//! few concurrent scrapers (several Prometheus servers, or one client looping) multiplied
//! that, outside every bound. Here at most one encoding per format runs at a time, and a
//! scrape reuses the body of an encoding that *started after it arrived* (so it never sees
//! data older than its own request), else it waits for the running one to finish and starts
//! the next, which every scrape waiting meanwhile shares. The body lives as long as a response
//! still sends it, no longer.

use axum::body::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use tokio::sync::Mutex;

/// The encodings of one format.
#[derive(Default)]
struct Format {
    /// Encodings started so far (the next one's index).
    started: AtomicU64,
    /// The last encoding, held while an encoding runs (on a blocking thread, whether or not
    /// the scrape that started it is still waiting).
    last: Arc<Mutex<Last>>,
}

#[derive(Default)]
struct Last {
    /// Index of the last finished encoding.
    index: Option<u64>,
    /// Its body, while some response still holds it.
    body: Weak<String>,
}

/// A body owned by the responses that send it.
struct Shared(Arc<String>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Coalesces `/metrics` scrapes: one encoding per format at a time, shared by the scrapes that
/// wait for it.
#[derive(Default)]
pub(crate) struct Scrapes {
    /// Prometheus text, then OpenMetrics.
    formats: [Format; 2],
    /// Scrapes that have arrived (read `started`) and not yet taken the lock: lets a test
    /// know they wait.
    #[cfg(test)]
    arrived: AtomicU64,
}

impl Scrapes {
    /// The body for a scrape arriving now: the text of an encoding that started after this
    /// call began, run by `encode` on a blocking thread unless another scrape's is reused.
    /// `None` if the encoding panicked.
    pub(crate) async fn body(
        &self,
        openmetrics: bool,
        encode: impl FnOnce() -> String + Send + 'static,
    ) -> Option<Bytes> {
        let format = &self.formats[usize::from(openmetrics)];
        let arrived = format.started.load(SeqCst);
        #[cfg(test)]
        self.arrived.fetch_add(1, SeqCst);
        let mut last = format.last.clone().lock_owned().await;
        if last.index.is_some_and(|i| i >= arrived) {
            if let Some(body) = last.body.upgrade() {
                return Some(Bytes::from_owner(Shared(body)));
            }
        }
        let index = format.started.fetch_add(1, SeqCst);
        // The lock goes with the encoding: a scrape that gives up waiting does not let a
        // second encoding start beside the one still running.
        let body = tokio::task::spawn_blocking(move || {
            let body = Arc::new(encode());
            last.index = Some(index);
            last.body = Arc::downgrade(&body);
            body
        })
        .await
        .ok()?;
        Some(Bytes::from_owner(Shared(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    // Eight scrapes at once while an encoding runs: the first one's encoding, then one more
    // that the seven waiting share (it started after each of them arrived). Encoding once per
    // scrape would make eight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_one_encoding_that_started_after_they_arrived() {
        let scrapes = Arc::new(Scrapes::default());
        let encodes = Arc::new(AtomicUsize::new(0));
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let first = {
            let (scrapes, encodes) = (scrapes.clone(), encodes.clone());
            tokio::spawn(async move {
                scrapes
                    .body(false, move || {
                        let n = encodes.fetch_add(1, SeqCst) + 1;
                        blocked.recv_timeout(Duration::from_secs(20)).unwrap();
                        format!("encoding {n}")
                    })
                    .await
            })
        };
        // The first encoding runs (and holds the lock) before the others arrive.
        for _ in 0..20_000 {
            if encodes.load(SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(encodes.load(SeqCst), 1);
        let others: Vec<_> = (0..7)
            .map(|_| {
                let (scrapes, encodes) = (scrapes.clone(), encodes.clone());
                tokio::spawn(async move {
                    scrapes
                        .body(false, move || {
                            let n = encodes.fetch_add(1, SeqCst) + 1;
                            format!("encoding {n}")
                        })
                        .await
                })
            })
            .collect();
        // Each of the seven has read the count of encodings started (1) before the first
        // finishes (bounded polling: a hang detector, not a timing check).
        for _ in 0..20_000 {
            if scrapes.arrived.load(SeqCst) == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(scrapes.arrived.load(SeqCst), 8);
        release.send(()).unwrap();
        let first = first.await.unwrap().unwrap();
        assert_eq!(&first[..], b"encoding 1");
        // Every body is kept until all are in: the shared body lives only while a response
        // holds it, and a scrape still to take the lock must find it alive (dropping each as
        // it came made a late one encode anew, on a busy machine).
        let mut bodies = Vec::new();
        for o in others {
            bodies.push(o.await.unwrap().unwrap());
        }
        for body in &bodies {
            assert_eq!(
                &body[..],
                b"encoding 2",
                "a waiting scrape encoded on its own"
            );
        }
        drop(bodies);
        assert_eq!(encodes.load(SeqCst), 2);

        // Once every response is gone, the body is too: a later scrape encodes afresh.
        let later = scrapes.body(false, || "encoding 3".into()).await.unwrap();
        assert_eq!(&later[..], b"encoding 3");
        // The other format never shares this one's encodings.
        let om = scrapes.body(true, || "openmetrics".into()).await.unwrap();
        assert_eq!(&om[..], b"openmetrics");
    }

    // A scrape never gets a body encoded before it arrived, even while one is kept alive.
    #[tokio::test]
    async fn a_scrape_never_reuses_an_encoding_older_than_itself() {
        let scrapes = Scrapes::default();
        let held = scrapes.body(false, || "old".into()).await.unwrap();
        let fresh = scrapes.body(false, || "new".into()).await.unwrap();
        assert_eq!(&held[..], b"old");
        assert_eq!(&fresh[..], b"new");
    }
}
