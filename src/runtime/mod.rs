//! Runtimes: what each language's processes are and need before they start
//! (generated configuration, command lines): the supervisor's
//! [`crate::supervisor::Launcher`]s for php-fpm and polyhost-python.
//! Starting, watching and stopping processes is the supervisor's job.

pub mod php;
pub mod python;
pub mod python_workers;
