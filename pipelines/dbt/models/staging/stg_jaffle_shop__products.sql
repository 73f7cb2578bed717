with

source as (

    select * from {{ source('jaffle_shop', 'raw_products') }}

),

renamed as (

    select
        ----------  ids
        cast(sku as text) as product_id,

        ---------- text
        cast(name as text) as product_name,
        cast(type as text) as product_type,
        cast(description as text) as product_description,

        ---------- numerics
        {{ cents_to_dollars('price') }} as product_price,

        ---------- booleans
        coalesce(cast(type as text) = 'jaffle', false) as is_food_item,
        coalesce(cast(type as text) = 'beverage', false) as is_drink_item

    from source

)

select * from renamed
