//! How long-running work reports progress without printing: the binaries decide how to show it.

/// Receives progress from long-running work. Every method has a do-nothing default.
pub trait Reporter: Send + Sync {
    /// A step starts; `total` is its size in bytes (0 when unknown).
    fn begin(&self, _step: &str, _total: u64) {}
    /// `bytes` more of the current step are done.
    fn advance(&self, _bytes: u64) {}
    /// The current step is finished.
    fn end(&self) {}
    /// A part of the current step starts (an image of a pull): `id` names it in the calls that
    /// follow, `total` is its size in bytes. Its bytes count in the step's [`advance`] too.
    ///
    /// [`advance`]: Reporter::advance
    fn part_begin(&self, _id: usize, _label: &str, _total: u64) {}
    /// `bytes` more of part `id` are done.
    fn part_advance(&self, _id: usize, _bytes: u64) {}
    /// Part `id` is finished.
    fn part_end(&self, _id: usize) {}
    /// A line about work under way that prints no progress of its own: a command's output as it
    /// comes, or how long it has been running.
    fn note(&self, _line: &str) {}
    /// Something the user should know that does not stop the work.
    fn warn(&self, _message: &str) {}
}

/// A reporter that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {}
