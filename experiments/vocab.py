"""Vocabulary of the simulated marketplace: aisles, product types, synonyms, attributes, brands, query words.

Aisles are grouped into departments; aisles of one department sit close together in the world's latent
semantic space (drinks near alcohol near coffee), and pet care stands apart. Each product type lists its
words: the first is the canonical name, the others are synonyms that titles and queries use interchangeably,
so a model must learn that "soda" and "soft drink" mean the same thing.
"""

from __future__ import annotations

# department -> aisles. Departments set the coarse geometry of the latent space (docs/design.md).
DEPARTMENTS: dict[str, tuple[str, ...]] = {
    "fresh": ("produce", "meat and seafood", "dairy and eggs", "bakery", "deli"),
    "pantry": ("pantry staples", "canned goods", "breakfast", "condiments", "snacks", "candy", "frozen"),
    "drinks": ("beverages", "coffee and tea", "alcohol"),
    "home": ("household", "personal care", "health", "baby"),
    "pets": ("pet care",),
}

# aisle -> product types; each type is "canonical|synonym|synonym".
AISLE_TYPES: dict[str, tuple[str, ...]] = {
    "produce": (
        "apples|apple|gala apples", "bananas|banana", "oranges|orange|navel oranges", "strawberries|berries",
        "grapes|seedless grapes", "avocados|avocado", "tomatoes|tomato", "potatoes|potato|spuds",
        "onions|onion", "carrots|carrot", "lettuce|salad greens|romaine", "lemons|lemon", "spinach|baby spinach",
        "cucumbers|cucumber",
    ),
    "meat and seafood": (
        "chicken breast|chicken fillet", "ground beef|minced beef|hamburger meat", "salmon|salmon fillet",
        "shrimp|prawns", "pork chops|pork chop", "bacon|bacon strips", "steak|ribeye|sirloin",
        "sausages|sausage|bratwurst", "turkey|turkey breast", "tuna steak|ahi tuna", "lamb|lamb chops",
        "chicken wings|wings",
    ),
    "dairy and eggs": (
        "milk|whole milk|dairy milk", "eggs|egg|dozen eggs", "butter|salted butter", "cheddar|cheddar cheese",
        "yogurt|yoghurt|greek yogurt", "cream cheese|soft cheese", "mozzarella|mozzarella cheese",
        "sour cream", "heavy cream|whipping cream", "cottage cheese", "parmesan|parmigiano", "oat milk|oat drink",
    ),
    "bakery": (
        "bread|sandwich bread|loaf", "bagels|bagel", "croissants|croissant", "muffins|muffin",
        "tortillas|wraps|flour tortillas", "baguette|french bread", "donuts|doughnuts|donut",
        "cake|birthday cake", "dinner rolls|rolls|buns", "pita|pita bread", "cookies|bakery cookies",
        "sourdough|sourdough bread",
    ),
    "deli": (
        "sliced ham|ham", "salami|genoa salami", "roast beef|deli roast beef", "hummus|houmous",
        "potato salad", "rotisserie chicken|roast chicken", "sushi|sushi rolls", "olives|olive",
        "sliced turkey|deli turkey", "pasta salad", "guacamole|guac", "prosciutto|parma ham",
    ),
    "pantry staples": (
        "rice|white rice|basmati", "pasta|spaghetti|penne", "flour|all purpose flour", "sugar|cane sugar",
        "olive oil|extra virgin olive oil", "vegetable oil|canola oil|cooking oil", "salt|sea salt",
        "black pepper|peppercorns", "baking soda|bicarbonate", "honey|raw honey", "quinoa", "lentils|dried lentils",
    ),
    "canned goods": (
        "canned tomatoes|diced tomatoes|tinned tomatoes", "black beans|canned beans", "chickpeas|garbanzo beans",
        "canned tuna|tuna in water", "tomato soup|canned soup", "chicken noodle soup|noodle soup",
        "canned corn|sweet corn", "coconut milk|coconut cream", "canned peaches|peaches in syrup",
        "baked beans", "tomato paste|tomato puree", "canned salmon",
    ),
    "breakfast": (
        "cereal|breakfast cereal", "oatmeal|porridge oats|oats", "granola|muesli", "pancake mix|waffle mix",
        "maple syrup|pancake syrup", "peanut butter|pb", "jam|jelly|preserves", "breakfast bars|cereal bars",
        "corn flakes|cornflakes", "instant oatmeal|oat cups", "nutella|hazelnut spread", "granola bars",
    ),
    "condiments": (
        "ketchup|tomato ketchup|catsup", "mustard|dijon mustard", "mayonnaise|mayo", "hot sauce|chili sauce|sriracha",
        "soy sauce|shoyu", "bbq sauce|barbecue sauce", "salad dressing|ranch dressing|vinaigrette",
        "pasta sauce|marinara|tomato sauce", "pickles|gherkins", "relish|pickle relish", "salsa|tomato salsa",
        "vinegar|balsamic vinegar",
    ),
    "snacks": (
        "potato chips|crisps|chips", "tortilla chips|nachos", "pretzels|pretzel", "popcorn|microwave popcorn",
        "crackers|cracker", "trail mix|nut mix", "almonds|roasted almonds", "cashews|cashew nuts",
        "beef jerky|jerky", "rice cakes", "cheese puffs|cheese curls", "peanuts|salted peanuts",
    ),
    "candy": (
        "chocolate bar|chocolate|candy bar", "gummy bears|gummies", "lollipops|lollipop", "mints|breath mints",
        "chewing gum|gum", "jelly beans", "licorice|liquorice", "caramels|toffee", "marshmallows|marshmallow",
        "dark chocolate|cocoa chocolate", "sour candy|sour gummies", "hard candy|boiled sweets",
    ),
    "frozen": (
        "frozen pizza|pizza", "ice cream|gelato", "frozen vegetables|frozen veg", "frozen fries|french fries",
        "frozen waffles", "frozen dumplings|potstickers|gyoza", "fish sticks|fish fingers", "frozen berries",
        "frozen meals|tv dinner|microwave meals", "ice pops|popsicles", "frozen burritos", "chicken nuggets|nuggets",
    ),
    "beverages": (
        "soda|soft drink|cola|pop", "sparkling water|seltzer|fizzy water", "orange juice|oj", "apple juice",
        "sports drink|electrolyte drink", "energy drink|energy drinks", "bottled water|spring water|water",
        "iced tea|ice tea", "lemonade", "kombucha", "coconut water", "ginger ale|ginger beer",
    ),
    "coffee and tea": (
        "ground coffee|coffee|filter coffee", "coffee beans|whole bean coffee", "instant coffee",
        "coffee pods|k cups|coffee capsules", "green tea", "black tea|english breakfast tea", "herbal tea|tisane",
        "chai|chai tea", "cold brew|cold brew coffee", "espresso|espresso beans", "matcha|matcha powder",
        "decaf coffee|decaf",
    ),
    "alcohol": (
        "beer|lager|ale", "red wine|cabernet|merlot", "white wine|chardonnay|sauvignon blanc", "vodka",
        "whiskey|whisky|bourbon", "hard seltzer|spiked seltzer", "rose wine|rose", "sparkling wine|prosecco|champagne",
        "tequila", "gin", "rum", "cider|hard cider",
    ),
    "household": (
        "paper towels|kitchen roll", "toilet paper|bathroom tissue|loo roll", "dish soap|washing up liquid",
        "laundry detergent|washing powder", "trash bags|bin bags|garbage bags", "all purpose cleaner|spray cleaner",
        "sponges|scrub sponges", "aluminum foil|tin foil", "plastic wrap|cling film", "light bulbs|bulbs",
        "batteries|aa batteries", "dishwasher tablets|dishwasher pods",
    ),
    "personal care": (
        "shampoo", "conditioner|hair conditioner", "body wash|shower gel", "toothpaste", "toothbrush|toothbrushes",
        "deodorant|antiperspirant", "razors|razor|shaving blades", "lotion|body lotion|moisturizer",
        "sunscreen|sunblock|spf", "hand soap|liquid soap", "mouthwash|mouth rinse", "cotton pads|cotton rounds",
    ),
    "health": (
        "pain reliever|ibuprofen|painkiller", "vitamins|multivitamin", "allergy medicine|antihistamine",
        "cough syrup|cough medicine", "bandages|plasters|band aids", "vitamin c|immune support",
        "antacid|heartburn relief", "cold and flu|flu relief", "first aid kit", "thermometer",
        "probiotics|probiotic", "eye drops",
    ),
    "baby": (
        "diapers|nappies", "baby wipes|wipes", "baby formula|infant formula|formula", "baby food|baby puree",
        "baby shampoo", "teething rings|teether", "baby bottles|feeding bottles", "pacifiers|dummies",
        "diaper cream|nappy cream", "baby snacks|puffs", "baby lotion", "sippy cups",
    ),
    "pet care": (
        "dog food|dry dog food|kibble", "cat food|wet cat food", "cat litter|kitty litter", "dog treats|dog biscuits",
        "cat treats", "chew toys|dog toys", "flea treatment|flea and tick", "bird seed|bird food",
        "fish food|fish flakes", "poop bags|dog waste bags", "puppy food", "cat toys",
    ),
}

# Attributes that a product may carry in its title and a query may ask for.
ATTRIBUTES: tuple[str, ...] = (
    "organic", "gluten free", "low fat", "sugar free", "vegan", "family size", "mini", "premium",
    "unscented", "spicy", "original", "fresh",
)

SIZES: tuple[str, ...] = ("100g", "250g", "500g", "1kg", "6 pack", "12 pack", "1 l", "2 l", "12 oz", "16 oz", "24 ct")

# Brand-name parts; each aisle gets its own brands, plus house brands that span every aisle.
BRAND_FIRST: tuple[str, ...] = (
    "Sunny", "Green", "Golden", "Blue", "Happy", "Nature's", "Urban", "Old Mill", "River", "Maple", "Silver",
    "North", "Bright", "Little", "Royal", "Wild", "Prairie", "Coastal", "Harvest", "True", "Pure", "Fox",
    "Cedar", "Sage", "Hill", "Lucky", "Simple", "Crystal", "Stone", "Red Barn",
)
BRAND_SECOND: tuple[str, ...] = (
    "Farms", "Valley", "Kitchen", "Co", "Brothers", "Market", "Table", "Creek", "Garden", "Harbor", "Orchard",
    "Pantry", "Labs", "Goods", "Works", "House", "Fields", "Road", "Grove", "Bay",
)
HOUSE_BRANDS: tuple[str, ...] = ("Market Basics", "Everyday Value", "Store Select", "Good Choice")

# Words of a generic title: a product titled only with these (and a house brand) reveals nothing of its aisle.
GENERIC_TITLE_WORDS: tuple[str, ...] = (
    "classic", "original", "value pack", "family pack", "variety pack", "essentials", "selection", "favorites",
    "multipack", "everyday", "signature", "assorted",
)

# Query modifiers that carry no product information (long-tail noise in real search logs).
QUERY_MODIFIERS: tuple[str, ...] = (
    "near me", "cheap", "best", "deals", "delivery", "on sale", "bulk", "for kids", "for party", "brands",
    "large", "small", "buy", "fast delivery", "tonight", "store",
)

# Broad intents: query text -> aisles that fully satisfy it (label 2); other aisles of their departments get 1.
BROAD_INTENTS: dict[str, tuple[str, ...]] = {
    "party drinks": ("beverages", "alcohol"),
    "party food": ("snacks", "candy", "deli"),
    "breakfast food": ("breakfast", "bakery", "dairy and eggs"),
    "healthy snacks": ("snacks", "produce"),
    "bbq supplies": ("meat and seafood", "condiments"),
    "cleaning supplies": ("household",),
    "baby essentials": ("baby",),
    "pet supplies": ("pet care",),
    "hot drinks": ("coffee and tea",),
    "sweets": ("candy", "bakery"),
    "cold medicine": ("health",),
    "dinner ingredients": ("meat and seafood", "produce", "pantry staples"),
    "toiletries": ("personal care",),
    "frozen food": ("frozen",),
    "cooking basics": ("pantry staples", "condiments", "canned goods"),
    "drinks": ("beverages", "coffee and tea", "alcohol"),
}


def aisles() -> tuple[str, ...]:
    """All aisles in a stable order (department by department)."""
    return tuple(a for dept in DEPARTMENTS.values() for a in dept)


def department_of(aisle: str) -> str:
    for dept, members in DEPARTMENTS.items():
        if aisle in members:
            return dept
    raise KeyError(f"unknown aisle {aisle!r}")
