with

source as (

    select * from {{ source('jaffle_shop', 'raw_stores') }}

),

renamed as (

    select
        ----------  ids
        cast(id as text) as location_id,

        ---------- text
        cast(name as text) as location_name,

        ---------- numerics
        cast(tax_rate as numeric) as tax_rate,

        ---------- timestamps
        cast(cast(opened_at as timestamp) as date) as opened_date

    from source

)

select * from renamed
