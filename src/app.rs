//! The application state: one value holding every service of this process, shared by the edges (HTTP handlers,
//! workers, CLI commands). Building it connects nothing eagerly; opening databases, serving and the shutdown
//! order are `server.rs`'s.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::access::RightsService;
use crate::access::authn::Authenticator;
use crate::config::Settings;
use crate::control::ControlPlane;
use crate::data::DataPlane;
use crate::db::PgTarget;
use crate::dbservers::ServerRegistry;
use crate::fanout::FanOut;
use crate::fleet::Fleet;
use crate::provisioning::Provisioner;
use crate::tenant::pool::{PoolSettings, TenantPools};
use crate::tenant::targets::Targets;

/// State shared by every handler and worker; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<App>);

pub struct App {
    settings: Settings,
    control: ControlPlane,
    data: DataPlane,
    fanout: FanOut,
    provisioner: Provisioner,
    auth: Arc<Authenticator>,
    access: RightsService,
    metrics: PrometheusHandle,
}

impl AppState {
    /// Connects to the control plane (lazily) and assembles the shared state. Loads (or creates) the tenant
    /// credential key.
    pub fn new(settings: Settings, control_target: &PgTarget) -> anyhow::Result<Self> {
        let control = ControlPlane::connect_lazy(control_target, &settings.database);
        let targets = Targets::load(&settings, control_target.clone())?;
        let pools = TenantPools::new(PoolSettings::from(&settings.routing));
        let data = DataPlane::new(control.clone(), targets.clone(), pools);
        let fanout = FanOut::new(control.clone(), data.clone(), &settings.workers);
        let provisioner = Provisioner::new(&settings, fanout.clone(), targets);
        let auth = Arc::new(Authenticator::new(
            control.clone(),
            settings.auth.cache_ttl(),
        ));
        let access = RightsService::new(control.clone(), auth.clone());
        Ok(Self(Arc::new(App {
            settings,
            control,
            data,
            fanout,
            provisioner,
            auth,
            access,
            metrics: crate::telemetry::recorder(),
        })))
    }

    /// The client lifecycle jobs.
    pub fn provisioner(&self) -> &Provisioner {
        &self.0.provisioner
    }

    /// Central fields and master templates pushed to every client.
    pub fn fanout(&self) -> &FanOut {
        &self.0.fanout
    }

    /// The fleet migration over every tenant, with the migrations of this binary.
    pub fn fleet(&self) -> Fleet {
        Fleet::new(self.0.control.clone(), self.targets().clone())
    }

    /// The data plane: route cache, routing pool, tenant targets.
    pub fn data(&self) -> &DataPlane {
        &self.0.data
    }

    /// The routing pool to tenant databases.
    pub fn pools(&self) -> &TenantPools {
        self.0.data.pools()
    }

    /// Where tenants live and how they connect.
    pub fn targets(&self) -> &Targets {
        self.0.data.targets()
    }

    /// Registration of database servers (the checks, the template database, the sealed password).
    pub fn servers(&self) -> ServerRegistry {
        ServerRegistry::new(self.0.control.clone(), self.targets().clone())
    }

    /// Bearer-token authentication and its principal cache (changes of rights go through [`Self::access`], which
    /// drops the cache).
    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.0.auth
    }

    /// Every change of users, roles, access and tokens: checks, writes and drops the principal cache in one call.
    pub fn access(&self) -> &RightsService {
        &self.0.access
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }
    pub fn control(&self) -> &ControlPlane {
        &self.0.control
    }
    pub fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }
}
