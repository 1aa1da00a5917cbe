//! How a caller reaches an environment, and the connection string it is handed.

use crate::domain::Secret;

/// Everything but RFC 3986 unreserved characters is percent-encoded in URI parts.
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How a caller reaches an environment.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub schema: Option<String>,
    pub user: String,
    pub password: Secret,
    /// Extra URI query parameters, e.g. `sslmode=require`.
    pub params: Vec<(String, String)>,
}

impl Connection {
    /// `postgresql://user:password@host:port/database?…`, every part percent-encoded; without
    /// the password unless `reveal`.
    pub fn uri(&self, reveal: bool) -> String {
        use percent_encoding::utf8_percent_encode as enc;
        let user = enc(&self.user, URI_COMPONENT);
        let userinfo = if reveal {
            format!("{user}:{}", enc(self.password.expose(), URI_COMPONENT))
        } else {
            user.to_string()
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut uri = format!(
            "postgresql://{userinfo}@{host}:{}/{}",
            self.port,
            enc(&self.database, URI_COMPONENT)
        );
        let mut params = self.params.clone();
        if let Some(schema) = &self.schema {
            params.push(("options".into(), format!("-csearch_path={schema},public")));
        }
        for (i, (k, v)) in params.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(&format!(
                "{}={}",
                enc(k, URI_COMPONENT),
                enc(v, URI_COMPONENT)
            ));
        }
        uri
    }
}
