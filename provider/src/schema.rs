//! Attribute declaration helpers, so every attribute states its description.

use std::collections::HashMap;
use tf_provider::schema::{Attribute, AttributeConstraint, AttributeType, Description};

pub fn attribute(
    attr_type: AttributeType,
    constraint: AttributeConstraint,
    description: &str,
) -> Attribute {
    Attribute {
        attr_type,
        description: Description::markdown(description),
        constraint,
        sensitive: false,
        deprecated: false,
    }
}

pub fn optional(attr_type: AttributeType, description: &str) -> Attribute {
    attribute(attr_type, AttributeConstraint::Optional, description)
}

pub fn computed(attr_type: AttributeType, description: &str) -> Attribute {
    attribute(attr_type, AttributeConstraint::Computed, description)
}

pub fn string_list() -> AttributeType {
    AttributeType::List(Box::new(AttributeType::String))
}

/// The object type of an offer, as returned in lists.
pub fn offer_object_type() -> AttributeType {
    AttributeType::Object(HashMap::from([
        ("cloud".to_string(), AttributeType::String),
        ("provider".to_string(), AttributeType::String),
        (
            "interruption_rate_source".to_string(),
            AttributeType::String,
        ),
        ("region".to_string(), AttributeType::String),
        ("zone".to_string(), AttributeType::String),
        ("instance_type".to_string(), AttributeType::String),
        ("vcpus".to_string(), AttributeType::Number),
        ("memory_gib".to_string(), AttributeType::Number),
        ("gpu_name".to_string(), AttributeType::String),
        ("gpu_count".to_string(), AttributeType::Number),
        ("on_demand_price".to_string(), AttributeType::Number),
        ("spot_price".to_string(), AttributeType::Number),
        ("interruption_rate".to_string(), AttributeType::String),
        ("observed_at".to_string(), AttributeType::String),
        ("source".to_string(), AttributeType::String),
    ]))
}

/// Marks an attribute deprecated; its description says what replaces it.
pub fn deprecated(mut attribute: Attribute) -> Attribute {
    attribute.deprecated = true;
    attribute
}

/// Marks an attribute sensitive: Terraform hides it in plans and output.
pub fn sensitive(mut attribute: Attribute) -> Attribute {
    attribute.sensitive = true;
    attribute
}

/// Optional in configuration; when unset, the provider plans the default.
pub fn optional_computed(attr_type: AttributeType, description: &str) -> Attribute {
    attribute(
        attr_type,
        AttributeConstraint::OptionalComputed,
        description,
    )
}
