with

products as (

    select * from {{ ref('stg_jaffle_shop__products') }}

),

supplies as (

    select * from {{ ref('stg_jaffle_shop__supplies') }}

),

product_supply_costs as (

    select
        product_id,
        sum(supply_cost) as supply_cost,
        count(*) as count_supplies

    from supplies

    group by 1

),

joined as (

    select
        products.*,
        coalesce(product_supply_costs.supply_cost, 0) as supply_cost,
        coalesce(product_supply_costs.count_supplies, 0) as count_supplies,
        products.product_price - coalesce(product_supply_costs.supply_cost, 0) as unit_margin

    from products

    left join product_supply_costs on products.product_id = product_supply_costs.product_id

)

select * from joined
