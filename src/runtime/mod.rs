//! Runtimes: how each language's processes are launched (the supervisor's
//! [`crate::supervisor::Launcher`] for php-fpm and polyhost-python).

pub mod python;
