//! A pool of TDS connections (deadpool): connections are made with a timeout, checked
//! with `SELECT 1` before reuse, and dropped after an error, so a restarted or flaky
//! server costs a reconnect, not a stuck source.

use std::time::Duration;

use deadpool::managed::{Manager, Metrics, Object, Pool, PoolError, RecycleError, RecycleResult};
use futures::future::BoxFuture;
use tiberius::Client;
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

use super::reader::{classify, Columns, TdsClient, TdsReader};
use super::stream::{CdcError, CdcReader};

pub struct TdsManager {
    config: tiberius::Config,
}

impl Manager for TdsManager {
    type Type = TdsClient;
    type Error = CdcError;

    async fn create(&self) -> Result<TdsClient, CdcError> {
        let tcp = TcpStream::connect(self.config.get_addr())
            .await
            .map_err(|e| {
                CdcError::Transient(format!("connecting to {}: {e}", self.config.get_addr()))
            })?;
        tcp.set_nodelay(true)
            .map_err(|e| CdcError::Transient(e.to_string()))?;
        Client::connect(self.config.clone(), tcp.compat_write())
            .await
            .map_err(classify)
    }

    async fn recycle(&self, client: &mut TdsClient, _: &Metrics) -> RecycleResult<CdcError> {
        let stream = client
            .simple_query("/* STRATA PING */ SELECT 1")
            .await
            .map_err(|e| RecycleError::Backend(classify(e)))?;
        stream
            .into_results()
            .await
            .map_err(|e| RecycleError::Backend(classify(e)))?;
        Ok(())
    }
}

/// Hands out a [`CdcReader`] for each poll.
pub trait Connect: Send + Sync {
    fn reader(&self) -> BoxFuture<'_, Result<Box<dyn CdcReader<Row = Columns> + '_>, CdcError>>;
}

/// The pool of one source.
pub struct TdsPool {
    pool: Pool<TdsManager>,
    database: String,
}

impl TdsPool {
    pub fn new(
        config: tiberius::Config,
        database: &str,
        size: usize,
        connect_timeout: Duration,
    ) -> Result<Self, CdcError> {
        let pool = Pool::builder(TdsManager { config })
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .wait_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| CdcError::Protocol(format!("connection pool: {e}")))?;
        Ok(Self {
            pool,
            database: database.to_string(),
        })
    }
}

impl Connect for TdsPool {
    fn reader(&self) -> BoxFuture<'_, Result<Box<dyn CdcReader<Row = Columns> + '_>, CdcError>> {
        Box::pin(async move {
            let client: Object<TdsManager> = self.pool.get().await.map_err(|e| match e {
                PoolError::Backend(e) => e,
                PoolError::Timeout(kind) => CdcError::Transient(format!(
                    "no connection to SQL Server within the connect timeout ({kind:?})"
                )),
                other => CdcError::Transient(other.to_string()),
            })?;
            let reader: Box<dyn CdcReader<Row = Columns>> =
                Box::new(TdsReader::new(client, &self.database));
            Ok(reader)
        })
    }
}
