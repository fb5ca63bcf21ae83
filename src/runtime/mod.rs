//! What a site's runtime needs before its processes can start: generated
//! configuration and the paths it lives at. Starting, watching and stopping
//! the processes is the supervisor's job, not this module's.
//!
//! - [`php`]: php-fpm pool configuration and binary lookup.
pub mod php;
