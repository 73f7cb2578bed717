with

source as (

    select * from {{ source('jaffle_shop', 'raw_orders') }}

),

renamed as (

    select
        ----------  ids
        cast(id as text) as order_id,
        cast(store_id as text) as location_id,
        cast(customer as text) as customer_id,

        ---------- numerics (jafgen writes cents)
        cast(subtotal as bigint) as subtotal_cents,
        cast(tax_paid as bigint) as tax_paid_cents,
        cast(order_total as bigint) as order_total_cents,
        {{ cents_to_dollars('subtotal') }} as subtotal,
        {{ cents_to_dollars('tax_paid') }} as tax_paid,
        {{ cents_to_dollars('order_total') }} as order_total,

        ---------- timestamps
        cast(ordered_at as timestamp) as ordered_at

    from source

)

select * from renamed
