//! Progress reporting for long image builds: phase names and elapsed time.

use std::time::{Duration, Instant};

/// How builds report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// Nothing (tracing events only).
    #[default]
    Silent,
    /// One line per phase on stderr: `image base-1a2b: mmdebstrap done in 41.2 s`.
    Lines,
    /// An indicatif spinner with the phase name and elapsed time (falls back to lines when stderr
    /// is not a terminal).
    Bar,
}

/// A running phase; finishing it prints its duration.
pub(crate) struct Phase {
    image: String,
    name: String,
    start: Instant,
    mode: Progress,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub(crate) fn phase(self, image: &str, name: &str) -> Phase {
        tracing::info!(image, phase = name, "image build phase");
        let bar = match self {
            Progress::Bar if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
                let b = indicatif::ProgressBar::new_spinner();
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{spinner} image {prefix}: {msg} ({elapsed})",
                ) {
                    b.set_style(style);
                }
                b.set_prefix(image.to_string());
                b.set_message(name.to_string());
                b.enable_steady_tick(Duration::from_millis(200));
                Some(b)
            }
            Progress::Bar | Progress::Lines => {
                eprintln!("image {image}: {name} ...");
                None
            }
            Progress::Silent => None,
        };
        Phase {
            image: image.to_string(),
            name: name.to_string(),
            start: Instant::now(),
            mode: self,
            bar,
        }
    }

    pub(crate) fn line(self, msg: &str) {
        tracing::info!("{msg}");
        if self != Progress::Silent {
            eprintln!("{msg}");
        }
    }
}

impl Phase {
    pub(crate) fn finish(self) -> Duration {
        let d = self.start.elapsed();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if self.mode != Progress::Silent {
            eprintln!(
                "image {}: {} done in {:.1} s",
                self.image,
                self.name,
                d.as_secs_f64()
            );
        }
        d
    }
}
