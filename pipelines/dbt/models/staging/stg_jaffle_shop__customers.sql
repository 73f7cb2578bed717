with

source as (

    select * from {{ source('jaffle_shop', 'raw_customers') }}

),

renamed as (

    select
        cast(id as text) as customer_id,
        cast(name as text) as customer_name

    from source

)

select * from renamed
