//! php-fpm for one site: the generated pool config ([`pool_config()`]), the
//! per-site paths ([`PhpPoolPaths`]) and which php-fpm binary to run
//! ([`find_fpm_binary`]).
mod launcher;
mod paths;
mod pool_config;

pub use launcher::{check_pool_config, check_pool_configs, PhpLauncher};

pub use paths::{
    find_fpm_binary, find_fpm_in, system_include_dirs, PhpPoolPaths, SYSTEM_INCLUDE_CANDIDATES,
};
pub use pool_config::{pool_config, PoolConfigError, PoolOptions};
