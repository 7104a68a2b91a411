//! Typed events of the served policy: each one writes its log line and
//! moves its metric in one `emit` (as `mrrec_stream::events` does for the
//! runtime), so the two cannot disagree. No label names a version, a path
//! or anything unbounded; those go only to the log.

use mrrec_messages::PolicyAnnouncement;
use std::path::Path;

/// Gauge: the policy version this process serves.
pub const POLICY_VERSION: &str = "mrrec_policy_version";
/// Counter: policy versions switched to while serving.
pub const SWAPS: &str = "mrrec_policy_swaps_total";
/// Counter: trusted versions that failed to load.
pub const LOAD_FAILURES: &str = "mrrec_policy_load_failures_total";
/// Counter: announcements refused before anything loaded.
pub const REFUSED: &str = "mrrec_policy_announcements_refused_total";

/// Registers the HELP text of the served policy's metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(POLICY_VERSION, "The policy version this process serves");
    metrics::describe_counter!(SWAPS, "Policy versions switched to while serving");
    metrics::describe_counter!(
        REFUSED,
        "Policy announcements refused: path not policy.dir/vNNNN for their version, or not a usable model"
    );
    metrics::describe_counter!(
        LOAD_FAILURES,
        "Trusted policy versions that failed to load; the serving version stays"
    );
}

/// A process loaded its first policy version.
pub struct PolicyLoaded<'a> {
    pub version: u32,
    pub dir: &'a Path,
}

impl PolicyLoaded<'_> {
    pub fn emit(&self) {
        tracing::info!(version = self.version, dir = %self.dir.display(), "policy loaded");
        metrics::gauge!(POLICY_VERSION).set(self.version as f64);
    }
}

/// The served version changed (the old one unloads when its calls finish).
pub struct PolicySwitched {
    pub from: u32,
    pub to: u32,
    pub load_ms: u64,
}

impl PolicySwitched {
    pub fn emit(&self) {
        tracing::info!(
            from = self.from,
            to = self.to,
            load_ms = self.load_ms,
            "policy switched; the old version unloads when its calls finish"
        );
        metrics::gauge!(POLICY_VERSION).set(self.to as f64);
        metrics::counter!(SWAPS).increment(1);
    }
}

/// A trusted announced version failed to load; `serving` stays.
pub struct PolicyLoadFailed<'a> {
    pub announcement: &'a PolicyAnnouncement,
    pub error: &'a dyn std::fmt::Display,
    pub serving: u32,
}

impl PolicyLoadFailed<'_> {
    pub fn emit(&self) {
        tracing::error!(
            version = self.announcement.version,
            path = %self.announcement.path,
            error = %self.error,
            "announced policy failed to load; still serving version {}",
            self.serving
        );
        metrics::counter!(LOAD_FAILURES).increment(1);
    }
}

/// An announcement was refused before anything loaded (its record goes to
/// the DLQ with the same reason); `serving` stays.
pub struct AnnouncementRefused<'a> {
    pub announcement: &'a PolicyAnnouncement,
    pub reason: &'a str,
    pub serving: u32,
}

impl AnnouncementRefused<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            version = self.announcement.version,
            path = %self.announcement.path,
            reason = %self.reason,
            "policy announcement refused; still serving version {}",
            self.serving
        );
        metrics::counter!(REFUSED).increment(1);
    }
}
