with

order_items as (

    select * from {{ ref('stg_jaffle_shop__order_items') }}

),

orders as (

    select * from {{ ref('stg_jaffle_shop__orders') }}

),

products as (

    select * from {{ ref('stg_jaffle_shop__products') }}

),

supplies as (

    select * from {{ ref('stg_jaffle_shop__supplies') }}

),

product_supply_costs as (

    -- what it costs to make one of each product: the sum of its supplies
    select
        product_id,
        sum(supply_cost) as supply_cost

    from supplies

    group by 1

),

joined as (

    select
        order_items.order_item_id,
        order_items.order_id,
        order_items.product_id,
        orders.customer_id,
        orders.location_id,
        orders.ordered_at,
        products.product_name,
        products.product_price,
        products.is_food_item,
        products.is_drink_item,
        coalesce(product_supply_costs.supply_cost, 0) as supply_cost

    from order_items

    left join orders on order_items.order_id = orders.order_id

    left join products on order_items.product_id = products.product_id

    left join product_supply_costs on order_items.product_id = product_supply_costs.product_id

)

select * from joined
