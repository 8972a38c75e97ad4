"""A fixed vocabulary of common English nouns (written for tokensieve, MIT like the code).

Needle values of the ``word`` kind and the words of the common-words task are drawn from it, so tasks
never depend on a word list that might be missing on the machine (RULER draws from ``wonderwords``).
"""

from __future__ import annotations

_TEXT = """
    apple anchor arrow autumn badge bakery balloon bamboo banner barrel basket beacon beetle bell
    bicycle blanket blossom bottle boulder bracelet branch bread bridge brush bucket buffalo butter
    button cabin cactus camera candle canyon carpet castle cattle cellar chair cherry chimney cider
    circus clock cloud clover coast cobalt coconut coffee comet compass copper cotton cradle crayon
    cricket crystal cupboard curtain daisy desert diamond dolphin donkey dragon drum eagle easel ember
    engine falcon feather fence fern fiddle field flute forest fossil fountain fox garden garlic giraffe
    glacier glove goblet granite grape gravel guitar hammer harbor harp hazel helmet heron hillside
    honey horizon hunter island ivory jacket jasmine jelly jungle kettle kitten ladder lagoon lantern
    lemon lettuce library lighthouse lily lizard lobster locket magnet mango maple marble meadow melon
    mirror mitten monkey mosaic mountain mushroom needle nectar nest noodle oasis ocean olive onion
    orchard otter owl paddle palace panda parrot peach peanut pebble pencil pepper piano pigeon pillow
    pine planet plum pocket pony porcelain potato puzzle quartz quill rabbit raccoon radish rainbow
    raven ribbon river robin rocket saddle salmon satchel scarf seashell shovel silver sparrow spider
    spoon squirrel stable statue stove sunflower swan teapot temple thistle thunder tiger timber tomato
    torch tortoise tower tractor trumpet tulip tunnel turnip umbrella valley velvet violin volcano wagon
    walnut walrus window winter wizard wolf yacht yarn zebra zeppelin acorn almond badger banjo beaver
    biscuit blizzard cabbage canoe carrot cedar chestnut cinnamon cobweb coral cougar crocus dagger dune
    elbow emerald ferret flamingo gazelle geyser ginger gondola gopher hamster hedgehog hornet iceberg
    igloo jaguar juniper kayak kiwi koala lemur lotus mammoth marlin meteor moose mustard narwhal nutmeg
    oyster pelican penguin pepperoni pheasant pickle pumpkin quokka radio reindeer rhubarb sapphire
    scooter sequoia sherbet sloth spinach tangerine thimble toucan trolley tundra turquoise vanilla
    vulture waffle wombat
"""

WORDS: tuple[str, ...] = tuple(_TEXT.split())
