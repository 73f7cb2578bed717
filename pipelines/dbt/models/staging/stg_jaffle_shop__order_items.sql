with

source as (

    select * from {{ source('jaffle_shop', 'raw_items') }}

),

renamed as (

    select
        cast(id as text) as order_item_id,
        cast(order_id as text) as order_id,
        cast(sku as text) as product_id

    from source

)

select * from renamed
