//! The gRPC API: request validation, conversion between wire messages and core types,
//! and the `Pricing` and `System` handlers.

use crate::auth::TenantId;
use crate::pricing::PriceBook;
use computearbitrage_api::pb::pricing_server::Pricing;
use computearbitrage_api::pb::system_server::System;
use computearbitrage_api::{pb, validate, ERROR_FIELD_METADATA};
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_core::{
    place, Architecture, Candidate, Cloud, Error, Offer, OfferFilter, PageCursor, Requirements,
    ScoringPolicy,
};
use computearbitrage_store::Store;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct PricingApi {
    pub book: Arc<PriceBook>,
    pub policy: ScoringPolicy,
}

pub struct SystemApi {
    pub book: Arc<PriceBook>,
    pub store: Arc<dyn Store>,
}

/// INVALID_ARGUMENT naming every violation; the first one's path goes in metadata.
pub(crate) fn invalid(violations: Vec<validate::Violation>) -> Status {
    let message = violations
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let mut status = Status::invalid_argument(message);
    if let Some(first) = violations.first() {
        if let Ok(value) = first.dotted_path().parse() {
            status.metadata_mut().insert(ERROR_FIELD_METADATA, value);
        }
    }
    status
}

fn core_error(error: Error) -> Status {
    match error {
        Error::NoMatch(_) => Status::failed_precondition(error.to_string()),
        Error::InvalidInput { .. } | Error::InvalidPageToken(_) => {
            Status::invalid_argument(error.to_string())
        }
        Error::Collect { retryable, .. } | Error::Driver { retryable, .. } if retryable => {
            Status::unavailable(error.to_string())
        }
        Error::Collect { .. } | Error::Driver { .. } => Status::internal(error.to_string()),
        Error::InvalidTransition { .. } => Status::failed_precondition(error.to_string()),
    }
}

/// Validated provider names → clouds. Validation has already rejected unknown names.
fn clouds(names: &[String]) -> Vec<Cloud> {
    names.iter().filter_map(|n| Cloud::parse(n)).collect()
}

fn optional_count(value: Option<i64>) -> Option<u32> {
    value.map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX))
}

pub fn filter_from_pb(f: &pb::OfferFilter) -> OfferFilter {
    OfferFilter {
        clouds: clouds(&f.providers),
        regions: f.regions.clone(),
        instance_types: f.instance_types.clone(),
        min_vcpus: f.min_vcpus,
        min_memory_gib: f.min_memory_gib,
        gpu_name: Some(f.gpu_name.clone()).filter(|g| !g.is_empty()),
        min_gpus: optional_count(f.min_gpus),
        max_spot_price: f.max_spot_price,
        ..OfferFilter::default()
    }
}

pub fn requirements_from_pb(r: &pb::Requirements) -> Requirements {
    Requirements {
        filter: OfferFilter {
            clouds: clouds(&r.providers),
            regions: r.regions.clone(),
            exclude_regions: r.exclude_regions.clone(),
            instance_types: Vec::new(),
            min_vcpus: r.min_vcpus,
            min_memory_gib: r.min_memory_gib,
            gpu_name: Some(r.gpu_name.clone()).filter(|g| !g.is_empty()),
            min_gpus: optional_count(r.min_gpus),
            architecture: Architecture::parse(&r.architecture),
            max_interruption_rate: r.max_interruption_rate,
            allow_unknown_interruption_rate: r.allow_unknown_interruption_rate.unwrap_or(true),
            max_spot_price: r.max_price_per_hour,
        },
        preferred_regions: r.preferred_regions.clone(),
    }
}

pub fn offer_to_pb(o: &Offer) -> pb::Offer {
    let (gpu_name, gpu_name_original, gpu_count) = match &o.gpu {
        Some(g) => (g.name.clone(), g.original_name.clone(), u32::from(g.count)),
        None => (String::new(), String::new(), 0),
    };
    pb::Offer {
        provider: o.cloud.to_string(),
        region: o.region.clone(),
        zone: o.zone.clone(),
        instance_type: o.instance_type.clone(),
        vcpus: o.vcpus,
        memory_gib: o.memory_gib,
        architecture: o.architecture.to_string(),
        gpu_name,
        gpu_name_original,
        gpu_count,
        on_demand_price: o.on_demand_price,
        spot_price: o.spot_price,
        interruption_rate: o.interruption_rate.to_string(),
        observed_at: rfc3339(o.observed_at),
        source: o.source.clone(),
    }
}

fn candidate_to_pb(c: &Candidate) -> pb::PlacementCandidate {
    pb::PlacementCandidate {
        offer: Some(offer_to_pb(&c.offer)),
        savings_percent: c.savings_percent,
        score: c.score,
        reason: c.reason.clone(),
    }
}

fn tenant<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<TenantId>()
        .map(|t| t.0.clone())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Pricing for PricingApi {
    async fn list_offers(
        &self,
        request: Request<pb::ListOffersRequest>,
    ) -> Result<Response<pb::ListOffersResponse>, Status> {
        let tenant = tenant(&request);
        let req = request.into_inner();
        let violations = validate::list_offers(&req);
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let filter = req.filter.as_ref().map(filter_from_pb).unwrap_or_default();
        let cursor = if req.page_token.is_empty() {
            None
        } else {
            Some(PageCursor::decode(&req.page_token).map_err(core_error)?)
        };
        let limit = match req.page_size {
            0 => computearbitrage_api::DEFAULT_PAGE_SIZE,
            n => n,
        } as usize;
        let catalog = self.book.catalog();
        let page = catalog
            .list(&filter, cursor.as_ref(), limit)
            .map_err(core_error)?;
        tracing::debug!(tenant = %tenant, returned = page.offers.len(), "ListOffers");
        Ok(Response::new(pb::ListOffersResponse {
            offers: page.offers.iter().map(offer_to_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn find_placement(
        &self,
        request: Request<pb::FindPlacementRequest>,
    ) -> Result<Response<pb::FindPlacementResponse>, Status> {
        let tenant = tenant(&request);
        let req = request.into_inner();
        let violations = validate::find_placement(&req);
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let requirements =
            requirements_from_pb(req.requirements.as_ref().unwrap_or(&Default::default()));
        let catalog = self.book.catalog();
        let placement = place(
            &catalog,
            &requirements,
            req.alternatives as usize,
            &self.policy,
        )
        .map_err(core_error)?;
        tracing::info!(
            tenant = %tenant,
            provider = %placement.best.offer.cloud,
            region = %placement.best.offer.region,
            instance_type = %placement.best.offer.instance_type,
            spot_price = placement.best.offer.spot_price,
            "placement decided"
        );
        Ok(Response::new(pb::FindPlacementResponse {
            best: Some(candidate_to_pb(&placement.best)),
            alternatives: placement.alternatives.iter().map(candidate_to_pb).collect(),
        }))
    }
}

#[tonic::async_trait]
impl System for SystemApi {
    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let statuses = self
            .store
            .collector_statuses()
            .await
            .map_err(|e| Status::unavailable(format!("cannot read collector status: {e}")))?;
        let catalog_offers = self.book.catalog().len() as u64;
        let failing = statuses.iter().any(|s| s.last_error.is_some());
        let status = if catalog_offers == 0 || failing {
            "degraded"
        } else {
            "ok"
        };
        Ok(Response::new(pb::HealthResponse {
            status: status.into(),
            catalog_offers,
            collectors: statuses
                .into_iter()
                .map(|s| pb::CollectorStatus {
                    source: s.source,
                    last_success_at: s.last_success_at.map(rfc3339).unwrap_or_default(),
                    last_failure_at: s.last_failure_at.map(rfc3339).unwrap_or_default(),
                    last_error: s.last_error.unwrap_or_default(),
                    offers: s.offers,
                })
                .collect(),
        }))
    }

    async fn version(
        &self,
        request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            service_version: env!("CARGO_PKG_VERSION").into(),
            api_version: computearbitrage_api::API_VERSION.into(),
            tenant: tenant(&request),
        }))
    }
}
