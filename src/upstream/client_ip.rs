//! The client's address as header text, shared by the router (its
//! `X-Forwarded-For`, the access log) and the upstreams that write their
//! own forwarded fields (`upstream::app::head`).

use std::net::IpAddr;

use http::HeaderValue;

/// `ip` as text (`192.0.2.1`, `2001:db8::1`). The last address formatted
/// on this thread is kept: a connection's requests come from one client, so
/// most requests reuse it instead of formatting (and allocating) it again.
pub fn ip_text(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((cached, text)) if *cached == ip => text.clone(),
        _ => {
            let text = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
                .expect("an IP address is a valid header value");
            *last = Some((ip, text.clone()));
            text
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_names_each_address_whatever_came_before() {
        for ip in ["192.0.2.1", "2001:db8::1", "192.0.2.1", "192.0.2.10"] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(parsed), ip);
        }
    }
}
