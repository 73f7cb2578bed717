with

source as (

    select * from {{ source('jaffle_shop', 'raw_supplies') }}

),

renamed as (

    select
        ----------  ids
        -- a supply (SUP-001) is used by several products, so the key is the pair
        md5(cast(id as text) || '|' || cast(sku as text)) as supply_uuid,
        cast(id as text) as supply_id,
        cast(sku as text) as product_id,

        ---------- text
        cast(name as text) as supply_name,

        ---------- numerics
        {{ cents_to_dollars('cost') }} as supply_cost,

        ---------- booleans
        cast(cast(perishable as text) as boolean) as is_perishable_supply

    from source

)

select * from renamed
