//! Tenant read tokens the admin API minted, kept as digests so they survive restarts.
//!
//! The store never sees a token, only its digest (computed by the server): a copy of the
//! database grants nothing.

use crate::{Store, StoreError};
use libsql::Value;

impl Store {
    /// Keeps a minted token's digest for `tenant`.
    pub async fn add_tenant_token(&self, digest: &str, tenant: &str) -> Result<(), StoreError> {
        self.off_worker(async {
            let handle = self.writer().await?;
            handle
                .writer
                .execute(
                    "INSERT INTO tenant_tokens (digest, tenant_id) VALUES (?1, ?2)",
                    vec![
                        Value::Text(digest.to_string()),
                        Value::Text(tenant.to_string()),
                    ],
                )
                .await
                .map_err(StoreError::db("store a tenant token"))?;
            Ok(())
        })
        .await
    }

    /// Every minted token's `(digest, tenant)`.
    pub async fn tenant_tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.off_worker(async {
            let conn = self.reader().await?;
            let mut rows = conn
                .query("SELECT digest, tenant_id FROM tenant_tokens", ())
                .await
                .map_err(StoreError::db("list tenant tokens"))?;
            let mut out = Vec::new();
            while let Some(r) = rows
                .next()
                .await
                .map_err(StoreError::db("list tenant tokens"))?
            {
                let text = |i| {
                    r.get::<String>(i).map_err(|e| StoreError::Corrupt {
                        table: "tenant_tokens",
                        id: 0,
                        problem: e.to_string(),
                    })
                };
                out.push((text(0)?, text(1)?));
            }
            Ok(out)
        })
        .await
    }

    /// Forgets every minted token of `tenant`; returns how many there were.
    pub async fn revoke_tenant_tokens(&self, tenant: &str) -> Result<u64, StoreError> {
        self.off_worker(async {
            let handle = self.writer().await?;
            handle
                .writer
                .execute(
                    "DELETE FROM tenant_tokens WHERE tenant_id = ?1",
                    vec![Value::Text(tenant.to_string())],
                )
                .await
                .map_err(StoreError::db("revoke tenant tokens"))
        })
        .await
    }
}
