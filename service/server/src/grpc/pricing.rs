//! The `Pricing` and `System` handlers.

use super::caller;
use super::wire::{
    candidate_to_pb, filter_from_pb, offer_to_pb, requirements_from_pb, unknown_name_warning,
};
use super::{core_status, invalid, store_status};
use computearbitrage_api::pb::pricing_server::Pricing;
use computearbitrage_api::pb::system_server::System;
use computearbitrage_api::{pb, validate};
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_core::{hints, place, PageCursor, ScoringPolicy};
use computearbitrage_orchestrator::pricing::PriceBook;
use computearbitrage_store::Scope;
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

/// The tenant of a request that may read.
fn reader<T>(request: &Request<T>, call: &str) -> Result<String, Status> {
    let caller = caller(request)?;
    caller.require(Scope::Read, call)?;
    Ok(caller.tenant)
}

#[tonic::async_trait]
impl Pricing for PricingApi {
    async fn list_offers(
        &self,
        request: Request<pb::ListOffersRequest>,
    ) -> Result<Response<pb::ListOffersResponse>, Status> {
        let tenant = reader(&request, "ListOffers")?;
        let req = request.into_inner();
        let violations = validate::list_offers(&req);
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let filter = req.filter.as_ref().map(filter_from_pb).unwrap_or_default();
        let cursor = if req.page_token.is_empty() {
            None
        } else {
            Some(PageCursor::decode(&req.page_token).map_err(core_status)?)
        };
        let limit = match req.page_size {
            0 => computearbitrage_api::DEFAULT_PAGE_SIZE,
            n => n,
        } as usize;
        let catalog = self.book.catalog();
        let page = catalog
            .list(&filter, cursor.as_ref(), limit)
            .map_err(core_status)?;
        // Only the first page explains names the catalog lacks; later pages repeat none.
        let warnings = if cursor.is_none() {
            hints::unknown_in_filter(&catalog, &filter)
                .iter()
                .map(|u| unknown_name_warning("filter", u))
                .collect()
        } else {
            Vec::new()
        };
        tracing::debug!(tenant = %tenant, returned = page.offers.len(), "ListOffers");
        Ok(Response::new(pb::ListOffersResponse {
            offers: page.offers.iter().map(offer_to_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
            warnings,
        }))
    }

    async fn find_placement(
        &self,
        request: Request<pb::FindPlacementRequest>,
    ) -> Result<Response<pb::FindPlacementResponse>, Status> {
        let tenant = reader(&request, "FindPlacement")?;
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
        .map_err(core_status)?;
        let mut warnings: Vec<pb::Warning> =
            hints::unknown_in_requirements(&catalog, &requirements)
                .iter()
                .map(|u| unknown_name_warning("requirements", u))
                .collect();
        warnings.extend(placement.warnings.iter().map(|message| pb::Warning {
            field: "requirements.allow_unknown_interruption_rate".into(),
            message: message.clone(),
        }));
        tracing::info!(
            tenant = %tenant,
            cloud = %placement.best.offer.cloud,
            region = %placement.best.offer.region,
            instance_type = %placement.best.offer.instance_type,
            spot_price = placement.best.offer.spot_price,
            "placement decided"
        );
        Ok(Response::new(pb::FindPlacementResponse {
            best: Some(candidate_to_pb(&placement.best)),
            alternatives: placement.alternatives.iter().map(candidate_to_pb).collect(),
            warnings,
        }))
    }
}

#[tonic::async_trait]
impl System for SystemApi {
    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        reader(&request, "Health")?;
        let statuses = self
            .store
            .collector_statuses()
            .await
            .map_err(store_status)?;
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
            tenant: reader(&request, "Version")?,
        }))
    }
}
