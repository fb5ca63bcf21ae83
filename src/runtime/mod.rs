//! Runtimes: what each language's processes are and need before they start
//! (generated configuration, command lines): the supervisor's
//! [`crate::supervisor::Launcher`]s for php-fpm, polyhost-python and `[app]` programs.
//! Starting, watching and stopping processes is the supervisor's job.

pub mod app;
pub mod php;
pub mod python;
