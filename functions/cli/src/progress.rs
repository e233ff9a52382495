//! Progress for a person at a terminal: a bar with size, speed and ETA on stderr when stderr
//! is a terminal, nothing otherwise (CI, Lambda, containers). The commands print their plain
//! summary lines either way.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use model_store::{ModelFile, ModelStatus, ModelStore, StoreError};

/// Whether bars are drawn: stderr is a terminal and `BITNET_PROGRESS` is not `0`.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
        && !std::env::var("BITNET_PROGRESS").is_ok_and(|v| v.trim() == "0")
}

fn target() -> ProgressDrawTarget {
    if enabled() {
        ProgressDrawTarget::stderr_with_hz(10)
    } else {
        ProgressDrawTarget::hidden()
    }
}

/// A bar over `total` bytes: `what [=====>   ] 412 MiB/1.12 GiB 95 MiB/s ETA 8s`.
pub fn bytes(what: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), target());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A spinner for work of unknown length: `⠙ what (3s)`.
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The store's model, showing the download (and then its verification) while it runs.
pub async fn fetch(store: &ModelStore) -> Result<Arc<ModelFile>, StoreError> {
    let get = store.get();
    tokio::pin!(get);
    let mut bar: Option<ProgressBar> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            result = &mut get => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return result;
            }
            _ = tick.tick() => match store.status() {
                ModelStatus::Downloading { bytes_done, bytes_total, .. } => {
                    let b = bar.get_or_insert_with(|| bytes("downloading", bytes_total));
                    b.set_length(bytes_total);
                    b.set_position(bytes_done);
                }
                ModelStatus::Verifying => {
                    if let Some(b) = &bar {
                        b.set_message("verifying");
                    }
                }
                _ => {}
            },
        }
    }
}

/// Counts the bytes written through it on a bar. Writes go through in slices of at most 8 MiB
/// so that one large `write_all` (a 600 MB tensor) still moves the bar.
pub struct Writer<W> {
    inner: W,
    bar: ProgressBar,
}

const SLICE: usize = 8 << 20;

impl<W: Write> Writer<W> {
    pub fn new(inner: W, bar: ProgressBar) -> Self {
        Self { inner, bar }
    }

    pub fn into_inner(self) -> W {
        self.bar.finish_and_clear();
        self.inner
    }
}

impl<W: Write> Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(SLICE)])?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_counts_every_byte_and_passes_them_through() {
        let bar = ProgressBar::hidden();
        bar.set_length(20 << 20);
        let mut w = Writer::new(Vec::new(), bar.clone());
        let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).unwrap();
        assert_eq!(bar.position(), data.len() as u64);
        assert_eq!(w.into_inner(), data);
    }
}
